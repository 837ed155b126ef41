"""Ways of deciding which neurons to keep; one file per method."""

from __future__ import annotations

from ..errors import InvalidInputError
from .base import Decision, Method
from .interpolative import Interpolative

METHODS = {Interpolative.name: Interpolative}


def make_method(name: str, **options) -> Method:
    """Build the method called ``name`` with its options (e.g. ``tol=0.1`` or ``keep=0.5``)."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}"
        ) from None
    return cls(**options)


__all__ = ["Decision", "Method", "METHODS", "make_method"]
