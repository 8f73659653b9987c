"""The package's shape: every module lives in a layer folder, imports run one way between
the folders, no module imports itself back through others (lazily or for types alike: a
cycle is a cycle of concepts), and modules and functions stay small enough to read."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import eidetic_func

PACKAGE = Path(eidetic_func.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str], *, package_of: str | None = None) -> set[str]:
    """Modules of the package that ``path`` imports: anywhere, type-only imports included
    (``package_of``: the module name of ``path``, default from its place in the package)."""
    name = package_of or _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return (found & modules) - {name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def test_no_module_imports_itself_back_through_others() -> None:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    graph = {_module_name(p): _imports(p, modules) for p in paths}
    # a package's __init__ re-exports its modules: edges into it are not cycles of code
    for deps in graph.values():
        deps -= {m for m in deps if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# The layers, bottom up, and what each folder may import (besides itself). ``data`` and
# ``io`` stand beside the layers; ``models`` (the repository's networks, installed as
# ``eidetic_func.models``) sits on ``nn``; the runner is the top and may import anything.
LAYERS = ("core", "nn", "ops", "importance", "training", "methods", "runner")
MAY_IMPORT: dict[str, frozenset[str]] = {
    **{layer: frozenset(LAYERS[:i]) for i, layer in enumerate(LAYERS)},
    "data": frozenset({"core"}),
    "io": frozenset({"core", "nn"}),
    "models": frozenset({"core", "nn"}),
}
MAY_IMPORT["runner"] = MAY_IMPORT["runner"] | {"data", "io", "models"}
MODELS = PACKAGE.parent / "models"  # eidetic_func.models, from the repository's models/


def _folder(module: str) -> str | None:
    """The layer folder of ``eidetic_func.<folder>.…`` (None: the package's facade)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else None


def _layer_violations(paths: list[Path], to_module: Any) -> dict[str, list[str]]:
    modules = {to_module(p) for p in paths}
    out = {}
    for path in paths:
        name = to_module(path)
        folder = _folder(name)
        if folder is None:
            continue
        bad = [
            m
            for m in _imports(path, modules | _all_modules(), package_of=name)
            if _folder(m) not in (None, folder) and _folder(m) not in MAY_IMPORT[folder]
        ]
        if bad:
            out[name] = sorted(bad)
    return out


def _all_modules() -> set[str]:
    found = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    return found | {_models_module(p) for p in MODELS.rglob("*.py")}


def _models_module(path: Path) -> str:
    parts = path.relative_to(MODELS).with_suffix("").parts
    return ".".join(("eidetic_func", "models", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def test_every_module_lives_in_a_layer_folder() -> None:
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert loose == []
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} == set(
        MAY_IMPORT
    ) - {"models"}


def test_imports_run_one_way_between_the_layer_folders() -> None:
    assert _layer_violations(sorted(PACKAGE.rglob("*.py")), _module_name) == {}
    assert _layer_violations(sorted(MODELS.rglob("*.py")), _models_module) == {}


def test_the_layer_rule_finds_an_upward_import(tmp_path: Path) -> None:
    core = PACKAGE / "core" / "state.py"
    fake = tmp_path / "state.py"
    fake.write_text(core.read_text() + "\nfrom eidetic_func.runner import cli\n")
    found = _layer_violations([fake], lambda _: "eidetic_func.core.state")
    assert found == {"eidetic_func.core.state": ["eidetic_func.runner.cli"]}


def test_no_module_imports_the_top_level_name_models() -> None:
    roots = [PACKAGE, MODELS, PACKAGE.parent / "tests", PACKAGE.parent / "benchmarks"]
    offending = []
    for path in (p for root in roots for p in sorted(root.rglob("*.py"))):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            if any(n == "models" or n.startswith("models.") for n in names):
                offending.append(f"{path.name}:{node.lineno}")
    assert offending == []


def test_importing_the_package_imports_no_baseline_and_no_runner() -> None:
    code = (
        "import sys, eidetic_func; "
        "print(sorted(m for m in sys.modules if m.startswith('eidetic_func.') and ("
        "m.startswith('eidetic_func.runner') or m.startswith('eidetic_func.methods.') "
        "and m.split('.')[2] not in ('protocol', 'chain', 'decisions', 'fields', 'schedule', 'eidetic', 'epoch'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert eidetic_func.RunConfig.__module__ == "eidetic_func.runner.config"  # still reachable
    assert eidetic_func.train_task.__module__ == "eidetic_func.runner.task"


def _method_name_branches(path: Path) -> list[str]:
    """``x.method == "eidetic"``-like comparisons of a method's name with a string."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        names = [s for s in sides if isinstance(s, ast.Name | ast.Attribute)]
        strings = [
            s for s in ast.walk(node) if isinstance(s, ast.Constant) and isinstance(s.value, str)
        ]
        if strings and any(_names_a_method(n) for n in names):
            found.append(f"{path.name}:{node.lineno}")
    return found


def _names_a_method(node: ast.Name | ast.Attribute) -> bool:
    """``method``, ``config.method``, ``method.name``, ``self.method.name``."""
    if isinstance(node, ast.Name):
        return node.id == "method"
    if node.attr == "method":
        return True
    return (
        node.attr == "name"
        and isinstance(node.value, ast.Name | ast.Attribute)
        and (_names_a_method(node.value))
    )


def test_the_shell_never_branches_on_a_methods_name() -> None:
    shell = [*(PACKAGE / "runner").glob("*.py"), *(PACKAGE / "training").glob("*.py")]
    shell += [PACKAGE / "methods" / "protocol.py", PACKAGE / "methods" / "eidetic.py"]
    assert [hit for f in shell for hit in _method_name_branches(f)] == []


def test_the_branch_finder_finds_a_branch(tmp_path: Path) -> None:
    source = tmp_path / "shell.py"
    source.write_text(
        'if config.method == "eidetic":\n    pass\nif method.name in ("ewc",):\n    pass\n'
    )
    assert _method_name_branches(source) == ["shell.py:1", "shell.py:3"]


MAX_MODULE_LINES = 400
MAX_FUNCTION_BODY_LINES = 60


def _function_bodies(path: Path) -> dict[str, int]:
    """``{qualified name: lines of body}`` of every function in ``path`` (docstring excluded)."""
    out = {}
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            documented = isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant
            )
            first = body[1] if documented and len(body) > 1 else body[0]
            assert node.end_lineno is not None
            out[f"{path.name}:{node.name}"] = node.end_lineno - first.lineno + 1
    return out


def _library_files() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *MODELS.rglob("*.py")])


def test_no_module_is_over_400_lines() -> None:
    long = {
        p.name: n
        for p in _library_files()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_has_over_60_lines_of_body() -> None:
    long = {
        name: n
        for p in _library_files()
        for name, n in _function_bodies(p).items()
        if n > MAX_FUNCTION_BODY_LINES
    }
    assert long == {}


def test_the_function_measure_skips_the_docstring_and_counts_the_body(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text('def f():\n    """doc\n    more"""\n    a = 1\n    return a\n')
    assert _function_bodies(source) == {"m.py:f": 2}


def test_the_lazy_package_resolves_every_name_and_types_it_as_it_resolves() -> None:
    """``eidetic_func``'s names are imported on first use (``_LAZY``); type checkers read the
    ``TYPE_CHECKING`` imports instead: both must name the same object for each name."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    typed: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module is not None
                for alias in imp.names:
                    module = imp.module.removeprefix("eidetic_func").lstrip(".")
                    typed[alias.asname or alias.name] = f"{module}.{alias.name}".lstrip(".")
    lazy = {
        name: module if attribute is None else f"{module}.{attribute}"
        for name, (module, attribute) in eidetic_func._LAZY.items()
    }
    assert {k: v for k, v in lazy.items() if k in typed} == typed
    for name in eidetic_func.__all__:
        assert getattr(eidetic_func, name) is not None, name
