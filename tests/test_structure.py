"""The library's shape: a short plain-PyTorch model path, small functions, no import cycle, the accelerator apart.

These read the source (``ast``), so they fail as soon as a change breaks one of the promises the
README makes to students reading the code.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "titn_edu"
MODEL_PATH = ["attention.py", "layers.py", "embeddings.py", "blocks.py", "model.py"]
MAX_MODEL_PATH_LINES = 700
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    """``{"titn_edu.x.y": path}`` for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, *, lazy: bool = True) -> set[str]:
    """Modules of the package that ``name`` imports; ``lazy=False``: only those imported with it (module level)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(tree) if lazy else tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    modules = _modules()
    return {t for t in out if t in modules and t != name}


def test_the_model_path_is_short():
    lines = {f: len((PACKAGE / f).read_text().splitlines()) for f in MODEL_PATH}
    assert sum(lines.values()) <= MAX_MODEL_PATH_LINES, lines


def test_no_function_is_longer_than_a_screen():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert not long, long


def test_no_import_cycle():
    """Not even through an import deferred into a function: every module stands on the ones below it."""
    graph = {name: _imports(name, path) for name, path in _modules().items()}
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    graph = {n: {t for t in ts if not (t.startswith(n + ".") and n in graph)} for n, ts in graph.items()}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            pytest.fail("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in done:
            return
        for target in sorted(graph.get(node, ())):
            visit(target, stack + [node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])


def test_the_model_path_knows_nothing_of_the_accelerator():
    for f in MODEL_PATH:
        text = (PACKAGE / f).read_text()
        assert not any("accel" in m for m in _imports(f"titn_edu.{f[:-3]}", PACKAGE / f)), f
        assert "import ctypes" not in text and "torch._C" not in text and "torch.ops" not in text, f


def test_the_accelerator_imports_only_torch_the_standard_library_and_itself():
    stdlib = set(sys.stdlib_module_names)
    for path in (PACKAGE / "accel").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue  # relative: its own files
            assert roots <= stdlib | {"torch", "__future__"}, (path.name, roots)
