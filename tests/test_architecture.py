"""The import graph of ``cybn/`` against the floors of docs/ARCHITECTURE.md: a module imports
only its own floor or lower, never in a circle (function-level imports count too)."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"

# The table of docs/ARCHITECTURE.md (test_the_doc_lists_these_floors keeps the two equal).
# A module belongs to the floor of its longest listed prefix.
FLOORS = {
    "cybn._kernels": 0,
    "cybn._validation": 1, "cybn._threads": 1, "cybn._config": 1, "cybn._formats": 1,
    "cybn._progress": 1, "cybn._comm": 1, "cybn.checkpoint": 1,
    "cybn.functional": 2, "cybn.reference": 2,
    "cybn.nn": 3, "cybn.data": 3,
    "cybn.train": 4, "cybn.distributed": 4, "cybn.export": 4,
    "cybn.recipe": 5, "cybn.deploy": 5,
    "cybn.experiments": 6,
    "cybn.cli": 7, "cybn.__main__": 7,
}
# Same-floor imports that the map forbids in words.
FORBIDDEN = {("cybn.data", "cybn.nn")}
EXEMPT = {"cybn"}  # cybn/__init__.py only re-exports the public API


def module_names(package_dir, package):
    """{dotted module name: path} of every .py file under ``package_dir``."""
    names = {}
    for path in sorted(Path(package_dir).rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join([package] + parts)] = path
    return names


def import_graph(package_dir, package):
    """{module: {imported module of the package}}, from every import statement in the file."""
    modules = module_names(package_dir, package)
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                bases = [(alias.name, []) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[:len(here.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                bases = [(base, [alias.name for alias in node.names])]
            else:
                continue
            for base, names in bases:
                # `from pkg import sub` imports the module pkg.sub when there is one
                subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
                if subs:
                    targets.update(subs)
                if len(subs) < len(names) or not names:
                    while base and base not in modules:
                        base = base.rpartition(".")[0]
                    if base:
                        targets.add(base)
        targets.discard(name)
        graph[name] = targets
    return graph


def floor_of(module, floors):
    best = max((p for p in floors if module == p or module.startswith(p + ".")), key=len, default=None)
    return None if best is None else floors[best]


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def violations(graph, floors, forbidden=(), exempt=()):
    """Every breach of the floors, as readable lines (empty when the graph keeps the map)."""
    problems = []
    graph = {m: t for m, t in graph.items() if m not in exempt}
    for module in sorted(graph):
        mine = floor_of(module, floors)
        if mine is None:
            problems.append(f"{module} is on no floor: add it to docs/ARCHITECTURE.md and FLOORS")
            continue
        for target in sorted(graph[module]):
            if target in exempt:
                continue
            theirs = floor_of(target, floors)
            if theirs is not None and theirs > mine:
                problems.append(f"{module} (floor {mine}) imports {target} (floor {theirs}): imports point down")
            for low_prefix, high_prefix in forbidden:
                if floor_of(module, {low_prefix: 0}) == 0 and floor_of(target, {high_prefix: 0}) == 0:
                    problems.append(f"{module} imports {target}, which the map forbids")
    inner = {m: {t for t in targets if t in graph} for m, targets in graph.items()}
    problems += [f"import cycle: {' -> '.join(c)}" for c in _cycles(inner)]
    return problems


def test_cybn_keeps_its_floors():
    graph = import_graph(ROOT / "cybn", "cybn")
    assert graph["cybn.cli"] and "cybn.recipe" in graph["cybn.cli.train"]  # the parser sees imports
    assert violations(graph, FLOORS, FORBIDDEN, EXEMPT) == []


# The kernels trust their inputs, so only validated front ends call them (and the two base
# modules that ask the OpenMP runtime about threads).
KERNEL_CALLERS = ("cybn.functional", "cybn._config", "cybn._threads")


def test_only_the_validated_front_ends_call_the_kernels():
    graph = import_graph(ROOT / "cybn", "cybn")
    side_doors = [f"{m} imports {t}" for m, targets in sorted(graph.items()) for t in sorted(targets)
                  if floor_of(t, FLOORS) == 0 and floor_of(m, FLOORS) != 0
                  and not any(m == c or m.startswith(c + ".") for c in KERNEL_CALLERS)]
    assert side_doors == []


def test_the_doc_lists_these_floors():
    doc = {}
    for line in DOC.read_text().splitlines():
        row = re.match(r"\|\s*(\d+)\s+\w+\s*\|(.*?)\|", line)
        if row:
            for module in re.findall(r"`([\w.]+)`", row.group(2)):
                doc[module] = int(row.group(1))
    assert doc == FLOORS


def _write(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("files,expected", [
    # a function-level import of a higher floor
    ({"low.py": "def f():\n    from .high import g\n", "high.py": ""}, "pkg.low (floor 1) imports pkg.high (floor 2)"),
    # `from . import sub` is an import of the module pkg.sub
    ({"low.py": "from . import high\n", "high.py": ""}, "pkg.low (floor 1) imports pkg.high"),
    ({"low.py": "import pkg.high.deep\n", "high/__init__.py": "", "high/deep.py": ""}, "imports pkg.high.deep"),
    # a circle on one floor
    ({"low.py": "from .twin import x\n", "twin.py": "from . import low\n"}, "import cycle: pkg.low -> pkg.twin"),
    ({"stray.py": ""}, "pkg.stray is on no floor"),
    ({"low.py": "from .data_ import x\n", "data_.py": ""}, "which the map forbids"),
])
def test_the_checker_finds_violations(tmp_path, files, expected):
    _write(tmp_path / "pkg", {"__init__.py": "", **files})
    floors = {"pkg.low": 1, "pkg.twin": 1, "pkg.data_": 1, "pkg.high": 2}
    found = violations(import_graph(tmp_path / "pkg", "pkg"), floors, {("pkg.low", "pkg.data_")}, {"pkg"})
    assert any(expected in v for v in found), found


def test_the_checker_accepts_imports_that_point_down(tmp_path):
    _write(tmp_path / "pkg", {"__init__.py": "from .high import *\n", "high.py": "from .low import x\nimport os\n",
                              "low.py": "from . import twin\n", "twin.py": ""})
    floors = {"pkg.low": 1, "pkg.twin": 1, "pkg.high": 2}
    assert violations(import_graph(tmp_path / "pkg", "pkg"), floors, (), {"pkg"}) == []
