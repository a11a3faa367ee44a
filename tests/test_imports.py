"""The package reads as the pipeline: its imports (every one, at module level or inside a function)
point one way, common <- electrode <- {dem, transport, view} <- surrogate <- model <- {evaluate, screen,
optimize} <- cli, with no cycle, and the runtime (surrogate, screen, optimize) imports nothing from
model, the only place TensorFlow is imported."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "calbatch"
# The stages from the bottom up: a module may import from its own stage and from lower ones.
# Stages of one rank are siblings and do not import each other.
RANK = {"common": 0, "electrode": 1, "dem": 2, "transport": 2, "view": 2, "surrogate": 3, "model": 4, "evaluate": 5,
        "screen": 5, "optimize": 5, "cli": 6}
# Leaves anything may import; they import nothing of calbatch's.
LEAVES = {"errors", "_core", "data"}
# The package's face: calbatch/__init__ re-exports the public API, __main__ runs the CLI.
TOP = {"__init__": 7, "__main__": 8}
RUNTIME = {"surrogate", "screen", "optimize"}
MAX_TOP_MODULES = 4


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name, the C++ core by its stub."""
    return {module_name(p): p for p in [*sorted(PACKAGE.rglob("*.py")), PACKAGE / "_core.pyi"]}


def resolve(found: dict[str, Path], name: str) -> str:
    """The calbatch module ``name`` stands for: itself, else the package that defines it as a name."""
    while name not in found:
        name = name.rpartition(".")[0]
    return name


def imports(found: dict[str, Path], name: str, path: Path) -> set[str]:
    """The calbatch modules that module ``name`` (file ``path``) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {resolve(found, a.name) for a in node.names if a.name.split(".")[0] == "calbatch"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            elif (node.module or "").split(".")[0] == "calbatch":
                base = node.module
            else:
                continue
            for a in node.names:
                if (base, a.name) == ("calbatch", "__version__"):
                    continue  # defined once at the top, where the build reads it
                out.add(resolve(found, f"{base}.{a.name}" if f"{base}.{a.name}" in found else base))
    return out - {name}


def stage(name: str) -> str:
    parts = name.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(found, name, path) for name, path in found.items()}


def against_the_arrows(edges: dict[str, set[str]]) -> list[str]:
    """Every import from a module to one its stage may not import, as 'a -> b (why)'."""
    level = {**RANK, **TOP}
    bad = []
    for a, targets in sorted(edges.items()):
        for b in sorted(targets):
            sa, sb = stage(a), stage(b)
            if sa in LEAVES and sb != sa:
                bad.append(f"{a} -> {b} (a leaf imports nothing of calbatch's)")
            elif sa == sb or sb in LEAVES:
                continue
            elif sa not in level or sb not in level:
                bad.append(f"{a} -> {b} (a folder that is no stage of the pipeline)")
            elif sb in ("cli", "__main__") and sa != "__main__":
                bad.append(f"{a} -> {b} (nothing imports the CLI)")
            elif sb == "__init__":
                bad.append(f"{a} -> {b} (inside the package, import from the stage, not the package's face)")
            elif sa in RUNTIME and sb == "model":
                bad.append(f"{a} -> {b} (the runtime imports nothing from model)")
            elif level[sa] <= level[sb]:
                bad.append(f"{a} -> {b} ({sa} may not import {sb})")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles, one per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_walker_reads_relative_and_absolute_imports():
    edges = graph()
    assert "calbatch.electrode.series" in edges["calbatch.dem"]  # from ..electrode.series import ...
    assert "calbatch.dem.reference" in edges["calbatch.evaluate.bench"]
    assert "calbatch.cli" in edges["calbatch.__main__"]
    assert against_the_arrows({"calbatch.electrode.volume": {"calbatch.dem.pack"}}) \
        == ["calbatch.electrode.volume -> calbatch.dem.pack (electrode may not import dem)"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_point_one_way():
    bad = against_the_arrows(graph())
    assert not bad, "imports against the allowed directions:\n" + "\n".join(bad)


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_few_modules_directly_under_the_package():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top
