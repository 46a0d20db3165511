"""The cloud imports nothing from the device side; the shared modules under sdk/ import neither side."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import sdk

ROOT = Path(sdk.__file__).parent
CLOUD = sorted((ROOT / "cloud").rglob("*.py"))
SHARED = sorted([*ROOT.glob("*.py"), *(ROOT / "backends").rglob("*.py")])


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (``from sdk import edge`` counts as sdk.edge)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def reaches(names: set[str], package: str) -> list[str]:
    return sorted(n for n in names if n == package or n.startswith(package + "."))


def test_the_layers_are_found():
    assert len(CLOUD) > 10
    assert {"wire.py", "outcomes.py", "loading.py", "confidence.py", "notices.py"} <= {p.name for p in SHARED}


@pytest.mark.parametrize("path", CLOUD, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_cloud_module_imports_nothing_from_the_edge(path):
    assert reaches(imported_modules(path), "sdk.edge") == []


@pytest.mark.parametrize("path", SHARED, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_shared_module_imports_neither_side(path):
    names = imported_modules(path)
    assert reaches(names, "sdk.edge") + reaches(names, "sdk.cloud") + reaches(names, "sdk.cli") == []


def test_loading_the_cloud_loads_no_edge_module():
    code = (
        "import sys\n"
        "import sdk.cloud.app, sdk.cloud.inference, sdk.cloud.worker, sdk.cloud.releases, sdk.cloud.server\n"
        "print(sorted(m for m in sys.modules if m == 'sdk.edge' or m.startswith('sdk.edge.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"
