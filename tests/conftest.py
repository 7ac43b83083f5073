"""Self-test fixtures."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture
def fmnist_test():
    """Fashion-MNIST test split (skips with the install hint when absent)."""
    from nnconform.data import DatasetUnavailable, load_fashion_mnist

    try:
        return load_fashion_mnist("test")
    except DatasetUnavailable as exc:
        pytest.skip(str(exc))
