"""The module import graph of geodino/ (an AST walk: top-level and function-level imports, no import executed):
no package imports another package's private module, and no import cycle between modules beyond today's, each
named below with its reason (a new cycle fails; a cycle that is gone must leave the list)."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "geodino"

# The root's process helpers: shared infrastructure of every package, private so that they stay off the public API.
SHARED_PRIVATE = {
    "geodino._lazy": "lazy_exports: every package __init__ imports its submodules on first use",
    "geodino._process": "malloc/GDAL memory policy applied by the CLI and long jobs (embed, canopy, engine)",
    "geodino._provenance": "the run record (library call or CLI argv) every product writes into its cube",
    "geodino._interrupts": "graceful stops of streaming jobs (CLI signals, a Jupyter kernel's interrupt)",
    "geodino._yaml": "the one YAML loader with line numbers that configs are validated through",
}

# Today's remaining cycles: an SCC is allowed when every module in it matches the patterns of one entry.
ALLOWED_CYCLES = [
]


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def resolve(name: str) -> str | None:  # the module a dotted name lives in (a name imported from it: its module)
        while name and name not in mods:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    b = ".".join(base + ([node.module] if node.module else []))
                else:
                    b = node.module or ""
                targets = [b] + [f"{b}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                if t == "geodino" or t.startswith("geodino."):
                    r = resolve(t)
                    if r and r != m:
                        edges[m].add(r)
    return edges


def _sccs(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


@pytest.fixture(scope="module")
def edges():
    return _graph()


def _private_owner(target: str) -> str | None:
    """The package that owns ``target`` when a part of its name is private (``a.b._c.d`` -> ``a.b``)."""
    parts = target.split(".")
    for i, part in enumerate(parts[1:], 1):
        if part.startswith("_"):
            return ".".join(parts[:i])
    return None


def test_the_walk_sees_the_graph(edges):
    # independent truth: edges written in the source of modules that must import each other
    assert "geodino.cube.store" in edges["geodino.cube.reading"]
    assert "geodino.cube.reading" in edges["geodino.analysis.pca"]
    assert "geodino.cube.compact" in edges["geodino.cube.store"]  # a function-level import
    assert "geodino._lazy" in edges["geodino.cube"]


def test_no_package_imports_another_packages_private_module(edges):
    bad = []
    for m, targets in edges.items():
        for t in targets:
            owner = _private_owner(t)
            if owner is None or t in SHARED_PRIVATE or m == owner or (owner != "geodino" and m.startswith(owner + ".")):
                continue
            bad.append(f"{m} -> {t}")
    assert not bad, ("private modules imported from outside their package (make what they hold public, e.g. in "
                     "geodino.cube.reading): " + "; ".join(sorted(bad)))


def test_shared_private_modules_exist():
    mods = _modules()
    assert set(SHARED_PRIVATE) <= set(mods), set(SHARED_PRIVATE) - set(mods)


def _allowed(comp: list[str]) -> int | None:
    for i, (patterns, _reason) in enumerate(ALLOWED_CYCLES):
        if all(any(fnmatch.fnmatchcase(m, p) for p in patterns) for m in comp):
            return i
    return None


def test_no_new_import_cycles(edges):
    comps = _sccs(edges)
    new = [c for c in comps if _allowed(c) is None]
    assert not new, "new import cycles between modules (break them: import in one direction only): " + \
        "; ".join(" <-> ".join(c) for c in new)
    used = {_allowed(c) for c in comps}
    gone = [ALLOWED_CYCLES[i][0] for i in range(len(ALLOWED_CYCLES)) if i not in used]
    assert not gone, f"these cycles are gone: remove them from ALLOWED_CYCLES: {gone}"


def test_the_cycle_check_finds_a_cycle():
    assert _sccs({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _sccs({"a": {"b"}, "b": set()}) == []
