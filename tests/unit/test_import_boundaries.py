"""Service boundaries, read from the code: a service never imports another service (what
two services share lives in ``services/common``), ``services/common`` imports no service,
and no two modules import each other, directly or through others (function-level
imports included: a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

SERVICES = ("inference", "ingest", "drift", "alerting", "retraining")
ROOT = REPO / "services"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every ``services.…`` module a file imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("services")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("services"):
            found.add(node.module)
            # ``from services.common import migrations`` names a module too
            found |= {
                f"{node.module}.{a.name}"
                for a in node.names
                if (ROOT.parent / node.module.replace(".", "/") / f"{a.name}.py").exists()
            }
    return found


def files() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def owner(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_service_imports_another_service() -> None:
    crossings = []
    for mod, path in files().items():
        mine = owner(mod)
        if mine not in SERVICES and mine != "common":
            continue  # the CLI, the SDK, the local stack and the demo drive services from outside
        for target in imports(path):
            theirs = owner(target)
            if theirs in SERVICES and theirs != mine:
                crossings.append(f"{mod} imports {target}")
    assert crossings == [], "\n".join(crossings)


def test_there_are_no_import_cycles() -> None:
    mods = files()
    graph = {m: {t for t in imports(p) if t in mods and t != m} for m, p in mods.items()}
    # a package's __init__ importing its own submodules is how packages are built, not a cycle
    for m in graph:
        graph[m] = {t for t in graph[m] if not t.startswith(m + ".") and not m.startswith(t + ".")}
    cycles, state, stack = [], dict.fromkeys(graph, 0), []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state[t] == 1:
                cycles.append(" -> ".join(stack[stack.index(t) :] + [t]))
            elif state[t] == 0:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if state[m] == 0:
            visit(m)
    assert cycles == [], "\n".join(cycles)


def test_the_check_sees_a_crossing(tmp_path: Path) -> None:
    """The parser finds function-level and ``from … import module`` imports."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from services.inference.app import deploy\n    import services.drift.monitor\n")
    assert imports(f) >= {"services.inference.app", "services.drift.monitor"}
