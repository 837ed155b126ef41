"""Shared fixtures: the real Fashion-MNIST test split and the trained reference model."""

from __future__ import annotations

import pytest

from netshrink.errors import DatasetNotFoundError


def _require_dataset() -> None:
    from netshrink.data import fashion_mnist

    try:
        fashion_mnist("test")
    except DatasetNotFoundError as exc:
        pytest.skip(f"Fashion-MNIST is not installed (sudo apt-get install dataset-fashion-mnist): {exc}")


@pytest.fixture
def fmnist_test():
    """(images (10000, 1, 28, 28) float32, labels (10000,) int64) of the test split; fresh per test."""
    from netshrink.data import fashion_mnist

    _require_dataset()
    return fashion_mnist("test")


@pytest.fixture(scope="session")
def trained_mlp7():
    """The trained ``mlp7`` (eval mode); trains it once into the cache when missing (minutes)."""
    from netshrink import zoo

    _require_dataset()
    return zoo.load("mlp7", progress=False)
