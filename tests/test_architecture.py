"""The house rules, read from the source: layers import downwards only, no cycles, no imports hidden in functions,
no private names borrowed across modules, and no module or function too long to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "bapo"

# What each layer may import of bapo, besides itself. Utilities are leaf modules every layer may use.
UTILITIES = {"bapo.errors", "bapo.io", "bapo.progress", "bapo.options"}
MAY_IMPORT = {
    "core": {"bapo.errors"},
    "utilities": {"bapo.errors", "bapo.core"},
    "data": {"core", "utilities"},
    "runtime": {"core", "utilities", "data"},
    "training": {"core", "utilities", "data", "runtime"},
    "evaluation": {"core", "utilities", "data", "runtime"},
    "balancing": {"core", "utilities", "data", "runtime"},
    "budget": {"core", "utilities", "data", "runtime", "training", "evaluation"},
    "studies": {"core", "utilities", "data", "runtime", "training", "evaluation", "balancing", "budget"},
    "serve": {"core", "utilities", "data", "runtime"},
    "top": {"core", "utilities", "data", "runtime", "training", "evaluation", "balancing", "budget", "studies",
            "serve"},
}
# Imports inside functions are allowed only where they keep start-up fast at the very top (nothing imports these).
LAZY_OK = {"bapo.cli"}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    if module in UTILITIES or module == "bapo.core.fields":
        return "utilities" if module in UTILITIES else "core"
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (SRC / parts[1]).is_dir()):
        return parts[1] if parts[1] in MAY_IMPORT else "top"
    return "top"


def imports(tree: ast.AST, module: str) -> list[tuple[str, ast.AST, bool]]:
    """(imported module, node, inside a function?) for every bapo import."""
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child, in_function) for a in child.names if a.name.split(".")[0] == "bapo")
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] == "bapo":
                for a in child.names:  # "from bapo.evaluation import tasks" imports the module bapo.evaluation.tasks
                    sub = f"{child.module}.{a.name}"
                    is_module = (SRC.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                    out.append((sub if is_module else child.module, child, in_function))
            visit(child, inner)

    visit(tree, False)
    return out


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}
TREES = {m: ast.parse(p.read_text()) for m, p in MODULES.items()}


def allowed(src: str, dst: str) -> bool:
    a, b = layer(src), layer(dst)
    if a == b or dst == "bapo.errors":
        return True
    granted = MAY_IMPORT[a]
    return b in granted or dst in granted or any(dst.startswith(g + ".") for g in granted if g.startswith("bapo."))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layers_import_downwards_only(module):
    bad = [f"{module} imports {dst} (line {node.lineno})" for dst, node, _ in imports(TREES[module], module)
           if not allowed(module, dst)]
    assert not bad, "\n".join(bad)


def test_the_rules_themselves_catch_a_wrong_import():
    assert not allowed("bapo.core.losses", "bapo.data.pairs") and not allowed("bapo.data.users", "bapo.runtime.models")
    assert not allowed("bapo.runtime.reference", "bapo.evaluation.metrics")
    assert not allowed("bapo.training.run", "bapo.studies.run") and not allowed("bapo.evaluation.runner", "bapo.cli")
    assert allowed("bapo.studies.run", "bapo.training.run") and allowed("bapo.core.losses", "bapo.core.fields")
    assert not allowed("bapo.serve.engine", "bapo.training.run") and allowed("bapo.serve.pool", "bapo.runtime.models")


def test_no_import_cycles():
    graph = {m: {dst for dst, _, _ in imports(TREES[m], m) if dst in MODULES and dst != m} for m in MODULES}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(n):] + [n]) if n in path else n)
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [m])


def test_no_bapo_import_hides_inside_a_function():
    bad = [f"{m}:{node.lineno} imports {dst} inside a function" for m in MODULES if m not in LAZY_OK
           for dst, node, inside in imports(TREES[m], m) if inside]
    assert not bad, "\n".join(bad)


def _private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("bapo", "tests"):
            bad += [f"{path.relative_to(ROOT)}:{node.lineno}: {a.name}" for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")]
        elif (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
              and isinstance(node.value, (ast.Name, ast.Attribute)) and ast.unparse(node.value).startswith("bapo")):
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return bad


def test_no_private_name_is_borrowed_from_another_module():
    files = [*SRC.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    bad = [b for f in files for b in _private_uses(f)]
    assert not bad, "\n".join(bad)


def test_modules_and_functions_stay_short():
    long_modules = [f"{m}: {len(p.read_text().splitlines())} lines" for m, p in MODULES.items()
                    if len(p.read_text().splitlines()) > MAX_MODULE_LINES]
    long_functions = [f"{m}.{n.name}: {n.end_lineno - n.lineno + 1} lines" for m in MODULES
                      for n in ast.walk(TREES[m]) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long_modules and not long_functions, "\n".join(long_modules + long_functions)
