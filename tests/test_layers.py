"""Layering of src/jacobix: no import cycles (imports inside functions included) and no upward imports.

Read from the source with ``ast``, so an import inside a function counts as much as one at the
top of a module. ``from jacobix.pkg import name`` depends on ``jacobix.pkg.name`` when that is a
module, else on the package's ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src" / "jacobix"
LIBRARY = ("core", "models", "tokens", "images", "flows", "latent", "integrations", "eval", "batch", "robot")
TOP = ("bench", "demos", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """jacobix modules that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_checker_finds_a_cycle_and_an_import_inside_a_function(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    source = tmp_path / "jacobix" / "flows" / "x.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from jacobix.train.tarflow import main\n    from . import sampling\n")
    known = {"jacobix.train.tarflow": source, "jacobix.flows.sampling": source, "jacobix.flows": source}
    assert imports_of("jacobix.flows.x", source, known) == {"jacobix.train.tarflow", "jacobix.flows.sampling"}


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_layers_point_down():
    bad = []
    for name, targets in graph().items():
        for target in targets:
            if layer(target) == "train" and layer(name) not in ("train", "cli"):  # the CLI registers the recipes
                bad.append(f"{name} imports trainer {target}")
            if layer(name) in LIBRARY and layer(target) in TOP:
                bad.append(f"library module {name} imports {target}")
            if layer(name) == "train" and layer(target) in ("demos", "bench", "cli"):
                bad.append(f"trainer {name} imports {target}")
    assert bad == []


def test_modules_and_functions_stay_small():
    """No module over 400 lines and no function over 60 (STYLE.md 16): any decoding loop fits on one screen."""
    big = []
    for name, path in modules().items():
        source = path.read_text()
        if source.count("\n") > 400:
            big.append(f"module {name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                big.append(f"function {name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert big == []
