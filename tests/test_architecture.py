"""The house rules a newcomer relies on to find their way, checked on the source (AST).

- contracts/ is the one home of the file contracts: each contract file's name and schema
  version is assigned in exactly one module there, and it imports no other lungbench package;
- reports/ reads runs only through contracts/ (it imports nothing from benchmark/);
- no import cycle between modules at import time;
- no function over 80 lines in the product packages (a habit: long functions are where the
  next bug hides, so split by step, not by line count);
- no module whose body is only re-exports, no one-letter alias of a lungbench module, no
  private helper (``_name``) imported from another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("contracts", "converters", "benchmark", "reports")
MAX_FUNCTION_LINES = 80
#: contract file -> the contracts module that owns it (name, schema, writer, reader)
CONTRACT_FILES = {"dataset.json": "contracts/dataset.py", "result.json": "contracts/result.py",
                  "sweep.json": "contracts/sweep.py", "predictions.json": "contracts/predictions.py"}


def sources(packages=PACKAGES) -> dict[str, ast.Module]:
    """``{"benchmark/run.py": tree}`` for every module of ``packages``."""
    out = {}
    for pkg in packages:
        for path in sorted((REPO / pkg).rglob("*.py")):
            out[path.relative_to(REPO).as_posix()] = ast.parse(path.read_text(), str(path))
    return out


def module_name(rel: str) -> str:
    name = rel.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def imported(rel: str, node: ast.AST) -> list[str]:
    """The absolute module names one import statement of module ``rel`` names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module_name(rel).split(".")
        base = base[: len(base) - node.level + (1 if rel.endswith("__init__.py") else 0)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    return [mod] + [f"{mod}.{a.name}" for a in node.names]


def top_level_imports(rel: str, tree: ast.Module) -> set[str]:
    """Modules imported when ``rel`` is imported (not those imported inside functions)."""
    found: set[str] = set()
    nodes = list(tree.body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, (ast.If, ast.Try)):
            nodes += node.body + node.orelse + getattr(node, "handlers", []) + getattr(node, "finalbody", [])
        elif isinstance(node, ast.ExceptHandler):
            nodes += node.body
        else:
            found.update(imported(rel, node))
    return found


def all_imports(tree: ast.Module, rel: str) -> set[str]:
    return {m for node in ast.walk(tree) for m in imported(rel, node)}


def test_each_contract_file_is_named_and_versioned_in_one_module():
    trees = sources(PACKAGES + ("perf",))
    where: dict[str, set[str]] = {name: set() for name in CONTRACT_FILES}
    for rel, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in CONTRACT_FILES:
                where[node.value].add(rel)
    assert where == {name: {owner} for name, owner in CONTRACT_FILES.items()}, (
        "a contract file's name (as a string of its own) outside its contracts module")
    for owner in CONTRACT_FILES.values():
        names = {t.id for node in trees[owner].body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)}
        assert {"FILENAME", "SCHEMA"} <= names, f"{owner} must define FILENAME and SCHEMA"
    schema_owners = sorted(rel for rel, tree in trees.items() for node in tree.body
                           if isinstance(node, ast.Assign)
                           for t in node.targets if isinstance(t, ast.Name) and t.id == "SCHEMA")
    assert set(schema_owners) <= set(CONTRACT_FILES.values()) | {"contracts/fsutil.py"}, schema_owners


def test_contracts_import_no_other_lungbench_package():
    for rel, tree in sources(("contracts",)).items():
        others = {m for m in all_imports(tree, rel) if m.split(".")[0] in {"converters", "benchmark", "reports", "perf"}}
        assert not others, f"{rel} imports {sorted(others)}"


def test_reports_read_runs_only_through_the_contracts():
    for rel, tree in sources(("reports",)).items():
        bad = {m for m in all_imports(tree, rel) if m.split(".")[0] == "benchmark"}
        assert not bad, f"{rel} imports {sorted(bad)}"


def test_no_import_cycle():
    trees = sources()
    modules = {module_name(rel): rel for rel in trees}
    graph = {}
    for name, rel in modules.items():
        deps = set()
        for m in top_level_imports(rel, trees[rel]):
            while m and m not in modules:
                m = m.rpartition(".")[0]
            if m and m != name and not name.startswith(m + "."):  # a package's own __init__
                deps.add(m)
        graph[name] = deps
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_function_over_80_lines():
    long = []
    for rel, tree in sources().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "split these into named steps: " + "; ".join(long)


def test_no_module_is_only_re_exports():
    for rel, tree in sources().items():
        body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        if rel.endswith("__init__.py") and not body:
            continue  # a package: its docstring says what it owns
        only_imports = body and all(
            isinstance(n, (ast.Import, ast.ImportFrom))
            or (isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets))
            for n in body)
        assert not only_imports, f"{rel} only re-exports names: import them where they live"


def test_packages_say_what_they_own():
    for rel, tree in sources().items():
        if rel.endswith("__init__.py"):
            assert ast.get_docstring(tree), f"{rel} needs a one-line docstring saying what the package owns"


def test_no_one_letter_aliases_nor_private_imports():
    problems = []
    for rel, tree in sources(PACKAGES + ("perf",)).items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                    m.split(".")[0] in PACKAGES + ("perf",) for m in imported(rel, node)):
                for a in node.names:  # (detectron2's own `transforms as T` is its convention)
                    if a.asname and len(a.asname) == 1:
                        problems.append(f"{rel}:{node.lineno} imports {a.name} as {a.asname}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        problems.append(f"{rel}:{node.lineno} imports the private {node.module}.{a.name}")
    assert not problems, "; ".join(problems)
