"""The layers: every import of our own code goes down (or sideways within a layer), never up.

events <- ledger.rules <- projections <- ledger.adapters <- workers <- ledger.api
<- ledger.entrypoints. A module that imports a layer above it fails this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top. A module belongs to the longest prefix that names it.
LAYERS = [
    "events",
    "ledger.rules",
    "projections",
    "ledger.adapters",
    "workers",
    "ledger.api",
    "ledger.entrypoints",
]
PACKAGES = ("events", "ledger", "projections", "workers")


def layer_of(module: str) -> int | None:
    """The rank of the layer that holds `module` (None for a package's bare `__init__`)."""
    best: tuple[int, int] | None = None
    for rank, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            length = len(prefix)
            if best is None or length > best[1]:
                best = (rank, length)
    return None if best is None else best[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import of our own packages in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c` names a.b.c: the longest prefix decides its layer.
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] in PACKAGES]
    return found


def upward_imports(module: str, source: str) -> list[str]:
    own = layer_of(module)
    if own is None:
        return []
    wrong = []
    for line, name in imports_of(source):
        target = layer_of(name)
        if target is not None and target > own:
            wrong.append(f"{module}:{line} imports {name} ({LAYERS[target]})")
    return wrong


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_every_module_belongs_to_a_layer() -> None:
    homeless = [
        module_name(p)
        for p in sources()
        if layer_of(module_name(p)) is None and module_name(p) != "ledger"
    ]
    assert homeless == []


def test_no_module_imports_a_layer_above_it() -> None:
    wrong = [line for p in sources() for line in upward_imports(module_name(p), p.read_text())]
    assert wrong == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("ledger.rules.lifecycle", "from projections.state import RequestState\n"),
        ("projections.views", "import workers.runtime\n"),
        ("workers.projector", "from ledger.api.readmodel import ReadModel\n"),
        ("ledger.adapters.kafka", "from ledger.entrypoints import cli\n"),
        ("events.codec", "from ledger.rules.policy import Policy\n"),
    ],
)
def test_an_upward_import_is_caught(module: str, source: str) -> None:
    assert len(upward_imports(module, source)) == 1


def test_an_import_downwards_or_within_a_layer_is_allowed() -> None:
    source = (
        "from events import decode\nfrom ledger.rules import lifecycle\nimport workers.runtime\n"
    )
    assert upward_imports("workers.validator", source) == []
