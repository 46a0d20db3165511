"""Each public package's ``__all__`` is sorted and lists exactly what it exports."""

from __future__ import annotations

import ast
import importlib
import inspect

import pytest
from extras import needs

PUBLIC = [
    "sdk.edge",
    "sdk.errors",
    "sdk.manifest",
    "sdk.outcomes",
    pytest.param("federation.export", marks=needs("torch")),
]


def isort_order(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then functions and the rest."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def public_names(module) -> set[str]:
    """Public names the module's own source binds: definitions, assignments, and a package's own re-exports."""
    names: set[str] = set()
    # A package re-exports from its own modules and from the shared ones of its project (sdk.edge from sdk.backends).
    project = module.__name__.split(".")[0]
    reexports_from = project + "." if hasattr(module, "__path__") else module.__name__ + "."
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(reexports_from):
            names.update(alias.asname or alias.name for alias in node.names)
    return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize("name", PUBLIC)
def test_all_is_sorted_and_complete(name):
    module = importlib.import_module(name)
    assert list(module.__all__) == sorted(set(module.__all__), key=isort_order)
    assert set(module.__all__) == public_names(module)
    assert all(hasattr(module, n) for n in module.__all__)
