"""Ways of deciding which units to keep; one file per method."""

from __future__ import annotations

import inspect

from ..errors import InvalidInputError
from .base import Decision, Method
from .baselines import LowRank, Magnitude, Random
from .group_lasso import GroupLasso
from .interpolative import Interpolative
from .multitask_lasso import MultitaskLasso
from .obs import StructuredOBS

METHODS = {cls.name: cls
           for cls in (Interpolative, GroupLasso, MultitaskLasso, StructuredOBS, Magnitude, Random, LowRank)}


def make_method(name: str, **options) -> Method:
    """Build the method called ``name`` with its options (e.g. ``tol=0.1`` or ``lam=0.05``).

    Options left at None are dropped, so callers can pass every option they know.
    """
    try:
        cls = METHODS[name]
    except (KeyError, TypeError):
        raise InvalidInputError(
            f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}"
        ) from None
    given = {key: value for key, value in options.items() if value is not None}
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise InvalidInputError(
            f"method {name!r} has no option {', '.join(unknown)}; its options are {', '.join(accepted)}"
        )
    return cls(**given)


__all__ = ["Decision", "Method", "METHODS", "make_method"]
