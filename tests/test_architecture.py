"""The package's shape: no module imports itself back through others (lazily or for types
alike: a cycle is a cycle of concepts)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import eidetic_func

PACKAGE = Path(eidetic_func.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports: anywhere, type-only imports included."""
    name = _module_name(path)
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


# The shell above the core: it names methods and runs whole sequences. Everything else in
# the package is the core (pure functions, the method protocol, EideticNet, train_task).
SHELL = ("baselines", "methods", "run_config", "sequence", "presets", "report", "cli", "__main__")


def _is_shell(module: str) -> bool:
    parts = module.split(".")
    return len(parts) > 1 and parts[1] in SHELL


def test_no_core_module_imports_the_baselines_or_the_run_shell() -> None:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    offending = {
        _module_name(p): sorted(m for m in _imports(p, modules) if _is_shell(m))
        for p in paths
        if p.name != "__init__.py" or p.parent != PACKAGE  # the package's facade is lazy
    }
    offending = {k: v for k, v in offending.items() if v and not _is_shell(k)}
    assert offending == {}


def test_importing_the_package_imports_no_baseline_and_no_run_shell() -> None:
    code = (
        "import sys, eidetic_func; "
        "print([m for m in sys.modules if m.startswith('eidetic_func.') "
        f"and m.split('.')[1] in {SHELL!r}])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert eidetic_func.RunConfig.__module__ == "eidetic_func.run_config"  # still reachable


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
    shell = ["train.py", "sequence.py", "run_config.py", "cli.py", "method.py", "eidetic.py"]
    assert [hit for f in shell for hit in _method_name_branches(PACKAGE / f)] == []


def test_the_branch_finder_finds_a_branch(tmp_path: Path) -> None:
    source = tmp_path / "shell.py"
    source.write_text(
        'if config.method == "eidetic":\n    pass\nif method.name in ("ewc",):\n    pass\n'
    )
    assert _method_name_branches(source) == ["shell.py:1", "shell.py:3"]
