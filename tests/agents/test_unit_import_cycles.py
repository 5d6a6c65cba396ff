"""No import cycle between modules of one package of services/ and libs/, and no import of a
sibling module hidden in a function or behind TYPE_CHECKING (the usual way to paper over one),
except those listed in KNOWN with the reason. Read from the source with `ast`: nothing imported.

Importing `a.b.c` runs `a.b`'s `__init__` too, so a module that imports a helper living inside a
package whose `__init__` imports the package's modules depends on all of them (that is how
`tools` ended up reaching into `workflows.retrieval` through a lazy import)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What is left, each with why; remove a line when its cause is gone (the test says so).
KNOWN = {
    # Textual is imported only when the TUI starts, not for every `amelia` command.
    "lazy amelia_cli.tui -> amelia_cli.tui.app",
    # The publish pipeline is the EventLog's own: it writes through its prepare/store/stats.
    "typing amelia_common.eventlog.pipeline -> amelia_common.eventlog.log",
}


def _modules(package: Path) -> dict[str, Path]:
    found = {}
    for file in package.rglob("*.py"):
        if "migrations" in file.parts or file.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        parts = list(file.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = file
    return found


def _imports(name: str, file: Path, modules: dict[str, Path]) -> list[tuple[str, str]]:
    """(module imported, how: top, lazy or typing) for each import of `name`."""
    found: list[tuple[str, str]] = []
    package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]

    def absolute(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = package[: len(package) - node.level + 1]
        return ".".join([*base, *([node.module] if node.module else [])])

    def visit(node: ast.AST, how: str) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, how) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = absolute(node)
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.append((sub if sub in modules else module, how))
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                visit(child, "typing")
            for child in node.orelse:
                visit(child, how)
        else:
            inner = "lazy" if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else how
            for child in ast.iter_child_nodes(node):
                visit(child, inner)

    for statement in ast.parse(file.read_text()).body:
        visit(statement, "top")
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            strong(v)
    return cycles


def _findings() -> set[str]:
    findings = set()
    packages = [p.parent for p in ROOT.glob("*/*/amelia_*/__init__.py")]
    assert len(packages) >= 6, packages
    for package in packages:
        modules = _modules(package)
        graph: dict[str, set[str]] = {m: set() for m in modules}
        for name, file in modules.items():
            parts = name.split(".")
            own_packages = {".".join(parts[:i]) for i in range(1, len(parts))}
            for target, how in _imports(name, file, modules):
                if target not in modules or target == name or target in own_packages:
                    continue
                if how != "top":
                    findings.add(f"{how} {name} -> {target}")
                    continue
                target_parts = target.split(".")
                for i in range(1, len(target_parts) + 1):
                    runs = ".".join(target_parts[:i])
                    if runs in modules and runs not in own_packages and runs != name:
                        graph[name].add(runs)
        findings.update(f"cycle {' '.join(cycle)}" for cycle in _cycles(graph))
    return findings


def test_no_import_cycle_within_a_package_but_the_known_ones() -> None:
    findings = _findings()
    assert sorted(findings - KNOWN) == [], "new: break the cycle, or list it in KNOWN with why"
    assert sorted(KNOWN - findings) == [], "gone: remove it from KNOWN"


def test_the_check_sees_a_lazy_import_and_a_cycle(tmp_path: Path) -> None:
    package = tmp_path / "amelia_demo"
    package.mkdir()
    (package / "__init__.py").write_text("from amelia_demo import a\n")
    (package / "a.py").write_text("from amelia_demo import b\n")
    (package / "b.py").write_text("def f():\n    from amelia_demo import a\n")
    modules = _modules(package)
    assert _imports("amelia_demo.b", modules["amelia_demo.b"], modules) == [
        ("amelia_demo.a", "lazy")
    ]
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
