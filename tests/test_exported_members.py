"""Each public package's ``__all__`` is sorted and lists exactly what it exports."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("name", ["sdk.edge", "sdk.errors", "sdk.manifest", "federation.export"])
def test_all_is_sorted_and_complete(name):
    module = importlib.import_module(name)
    defined_here = {
        n for n, v in vars(module).items() if not n.startswith("_") and getattr(v, "__module__", "").startswith(name)
    }

    assert len(module.__all__) == len(set(module.__all__))  # ruff's RUF022 keeps the order
    assert defined_here <= set(module.__all__)
    assert all(hasattr(module, n) for n in module.__all__)
