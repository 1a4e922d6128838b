"""The layers of docs/architecture.md, checked on the source with ``ast``.

problems -> solver kernels (``solvers/_kernels``) -> solvers -> api -> torch adapter / studies:

* a public solver module imports kernels and problems, never another public solver module
  (at top level or lazily inside a function);
* a kernel imports no public solver module;
* ``combprune.problems`` imports nothing from ``combprune.solvers``;
* the module-level import graph of ``combprune.*`` has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Package name -> source folder (pyproject's package-dir).
PACKAGES = {"combprune": ROOT / "combprune", "combprune.problems": ROOT / "problems", "combprune.solvers": ROOT / "solvers"}


def _module_name(path: Path) -> str:
    for pkg, folder in sorted(PACKAGES.items(), key=lambda kv: -len(str(kv[1]))):
        if folder in path.parents or path.parent == folder:
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            return ".".join([pkg, *parts])
    raise ValueError(path)


def _modules() -> dict[str, Path]:
    out = {}
    for folder in PACKAGES.values():
        for path in folder.rglob("*.py"):
            if "__pycache__" not in path.parts:
                out[_module_name(path)] = path
    return out


def imports(source: str, module: str, *, top_level_only: bool = False) -> set[str]:
    """Absolute names of the modules ``module`` imports (``from X import y`` gives ``X`` and
    ``X.y``); only statements at module level (not in functions, not under ``TYPE_CHECKING``)
    when ``top_level_only``."""
    tree = ast.parse(source)
    package = module.rsplit(".", 1)[0]
    nodes = []
    if top_level_only:
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            nodes.extend(n for n in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
    else:
        nodes = list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return out


def _package_module(path: Path) -> str:
    """The name used to resolve relative imports: the package itself for an ``__init__``."""
    name = _module_name(path)
    return name + ".__init__" if path.name == "__init__.py" else name


def _is_public_solver(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 3 and parts[:2] == ["combprune", "solvers"] and not parts[2].startswith("_")


def _is_kernel(name: str) -> bool:
    return name.startswith("combprune.solvers._kernels")


def layer_violations(module: str, source: str) -> list[str]:
    """The layer rules broken by ``source`` if it were ``module`` (module docstring)."""
    found = imports(source, module)
    bad = []
    if _is_public_solver(module) or _is_kernel(module):
        for name in sorted(found):
            if _is_public_solver(name) and name != module:
                bad.append(f"{module} imports the public solver module {name}")
    if module.startswith("combprune.problems"):
        bad.extend(f"{module} imports {name} (problems must not import solvers)" for name in sorted(found)
                   if name.startswith("combprune.solvers"))
    return bad


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        targets = imports(path.read_text(), _package_module(path), top_level_only=True)
        # a package's own ancestors are always initialised first: an edge to one is no cycle
        graph[name] = {t for t in targets if t in mods and t != name and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a list of nodes (None when acyclic)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                cyc = visit(v)
                if cyc:
                    return cyc
        stack.pop()
        state[u] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cyc = visit(node)
            if cyc:
                return cyc
    return None


def test_module_names_cover_the_tree():
    mods = _modules()
    assert "combprune.solvers.chita" in mods and "combprune.solvers._kernels.linalg" in mods
    assert "combprune.problems.budget" in mods and "combprune.api" in mods


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m.startswith(("combprune.solvers", "combprune.problems"))))
def test_layers(module):
    path = _modules()[module]
    assert layer_violations(module, path.read_text()) == []


def test_no_import_cycle_at_module_level():
    assert find_cycle(_graph()) is None


@pytest.mark.parametrize(
    "module, source",
    [
        ("combprune.solvers.chita", "from .iht import run_iht\n"),
        ("combprune.solvers.chita", "def f():\n    from combprune.solvers.swap import swap\n"),
        ("combprune.solvers.osscar", "import combprune.solvers.group_magnitude\n"),
        ("combprune.solvers._kernels.refine", "def f():\n    from ..backsolve import ridge_solve_on_support\n"),
        ("combprune.problems.l0_regression", "from combprune.solvers._kernels.linalg import psd_solve\n"),
    ],
)
def test_a_forbidden_import_is_reported(module, source):
    assert layer_violations(module, source)


@pytest.mark.parametrize(
    "module, source",
    [
        ("combprune.solvers.chita", "from ._kernels.l0_family import run_iht\nfrom combprune.api import solve\n"),
        ("combprune.solvers._kernels.refine", "from .ridge import ridge_solve_on_support\n"),
        ("combprune.problems.l0_regression", "from .budget import Budget\n"),
    ],
)
def test_an_allowed_import_is_not_reported(module, source):
    assert layer_violations(module, source) == []


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
