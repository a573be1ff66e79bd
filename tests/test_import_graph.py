"""The package's import graph: no cycles, inference never imports training, no private names across modules.

Every ``import`` statement of every module in ``backend/`` and ``mononphm_blender/`` counts, also those inside
functions (a deferred import is still an arrow between modules; deferring one only hides a cycle).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("backend", "mononphm_blender")
# inference (tracking, the model) must run from a tree without the training code
INFERENCE = ("backend.tracking", "backend.model")
TRAINING = "backend.training"


def _modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the two packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """-> [(target module, imported names, line)] of every import statement in the module (function bodies too)."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names = tuple(a.name for a in node.names)
            # `from package import submodule` is an arrow to the submodule, not to the package
            subs = [n for n in names if f"{target}.{n}" in modules]
            out += [(f"{target}.{n}", (), node.lineno) for n in subs]
            rest = tuple(n for n in names if n not in subs)
            if rest:
                out.append((target, rest, node.lineno))
    return [(t, n, line) for t, n, line in out if t.split(".")[0] in PACKAGES]


def _graph():
    modules = _modules()
    return modules, {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(edges: dict[str, set]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return comps


def test_no_import_cycles():
    modules, imports = _graph()
    edges = {m: {t for t, _, _ in imps if t in modules and t != m} for m, imps in imports.items()}
    assert _cycles(edges) == []


def test_inference_never_imports_training():
    _, imports = _graph()
    bad = [f"{m}:{line} imports {t}" for m, imps in imports.items() if m.startswith(INFERENCE)
           for t, _, line in imps if t == TRAINING or t.startswith(TRAINING + ".")]
    assert bad == []


def test_no_private_names_across_modules():
    _, imports = _graph()
    bad = [f"{m}:{line} imports {n} from {t}" for m, imps in imports.items() for t, names, line in imps
           if t != m for n in names if n.startswith("_") and not n.startswith("__")]
    assert bad == []


def test_graph_sees_deferred_and_relative_imports():
    """The walker resolves relative imports and finds imports inside function bodies (checked on cli.py)."""
    _, imports = _graph()
    targets = {t for t, _, _ in imports["backend.cli"]}
    assert {"backend.contracts.protocol", "backend.contracts.result_format"} <= targets
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
