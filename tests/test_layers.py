"""One floor per concept: every import in the library obeys the layering rule, read from the code itself.

    featurestore < embed < models < stack < submit | reports < students < pipelines   (bench: any library)

A package imports only from the floors below it (``submit`` and ``reports`` sit side by side and never
import each other); no library package imports ``pipelines``; no two modules import each other, directly
or round a longer circle, even lazily inside a function; no private name (``_x``) is imported from
another package. Run ``python tests/test_layers.py`` to print the package graph these tests check.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOORS: dict[str, frozenset[str]] = {        # package -> the project packages it may import
    "featurestore": frozenset(),
    "embed": frozenset({"featurestore"}),
    "models": frozenset({"featurestore", "embed"}),
    "stack": frozenset({"featurestore", "embed", "models"}),
    "submit": frozenset({"featurestore", "embed", "models", "stack"}),
    "reports": frozenset({"featurestore", "embed", "models", "stack"}),
    "students": frozenset({"featurestore", "embed", "models", "stack", "submit"}),
    "pipelines": frozenset({"featurestore", "embed", "models", "stack", "submit", "reports", "students"}),
    "bench": frozenset({"featurestore", "embed", "models", "stack", "submit", "reports", "students"}),
}
PACKAGES = tuple(FLOORS)


def modules() -> dict[str, Path]:
    """Every module of the project's packages (and bench scripts), by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> list[tuple[int, str, str]]:
    """(line, imported project module, imported name) of every import in a file, lazy ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                target = sub if sub in known else node.module
                if target.split(".")[0] in FLOORS:
                    out.append((node.lineno, target, "" if target == sub else alias.name))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, "") for a in node.names if a.name.split(".")[0] in FLOORS]
    return out


def graph() -> dict[str, dict[str, list[str]]]:
    """module -> imported project module -> where (``file:line``)."""
    known = modules()
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name, path in known.items():
        for line, target, _ in imports(path, known):
            if target != name:
                edges[name][target].append(f"{path.relative_to(REPO)}:{line}")
    return edges


def cycles(edges: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_import_obeys_the_layering_rule() -> None:
    offenders = [f"{where}: {module} imports {target}"
                 for module, targets in graph().items() for target, places in targets.items()
                 for where in places
                 if target.split(".")[0] != module.split(".")[0]
                 and target.split(".")[0] not in FLOORS[module.split(".")[0]]]
    assert offenders == [], "imports against the layering rule (see tests/test_layers.py):\n" + "\n".join(offenders)


def test_no_two_modules_import_each_other_even_lazily() -> None:
    assert cycles(graph()) == []


def test_no_private_name_is_imported_from_another_package() -> None:
    known = modules()
    offenders = [f"{path.relative_to(REPO)}:{line}: {target}.{name}"
                 for module, path in known.items() for line, target, name in imports(path, known)
                 if name.startswith("_") and target.split(".")[0] != module.split(".")[0]]
    assert offenders == []


def test_the_rule_reads_real_imports() -> None:
    """The reader is not blind: known edges of the real code are seen, lazy ones included."""
    edges = graph()
    assert "featurestore.store" in edges["embed.job"]                     # a top-level import
    assert "stack.bundle" in edges["submit.predict"]                      # a lazy import inside a function
    assert not any(t.startswith("pipelines") for m, ts in edges.items() if not m.startswith("pipelines") for t in ts)


def package_graph() -> str:
    """The package graph: ``A -> B (n imports)`` per pair, and the module circles (none expected)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    edges = graph()
    for module, targets in edges.items():
        for target, places in targets.items():
            a, b = module.split(".")[0], target.split(".")[0]
            if a != b:
                counts[a, b] += len(places)
    lines = [f"{a:>12} -> {b:<12} {n:3d} imports" for (a, b), n in sorted(counts.items(),
             key=lambda kv: (PACKAGES.index(kv[0][0]), PACKAGES.index(kv[0][1])))]
    package_edges = {a: {b: [] for (x, b) in counts if x == a} for (a, _) in counts}
    lines.append(f"circles between packages: {len(cycles(package_edges))}; between modules: {len(cycles(edges))}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(print(package_graph()))
