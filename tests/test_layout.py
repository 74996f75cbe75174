"""The package's structure: the container boundary, no import cycles, one module speaking SQL.

Read from the source with ast (nothing of remote is run), except the boundary test, which
imports ``remote.server`` in a fresh interpreter as the container does.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "remote"
#: What the server's side may import besides the standard library: the image has these
#: (numpy, gymnasium) or the payload brings them (msgpack, Pyro5 and its serpent).
SERVER_THIRD_PARTY = {"numpy", "gymnasium", "msgpack", "Pyro5", "serpent"}
#: Host-side modules and libraries the container must never need.
HOST_ONLY = [
    "remote.runner",
    "remote.client",
    "remote.manager",
    "remote.runtime",
    "remote.images",
    "psutil",
    "requests",
    "sqlite3",
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, bool]]:
    """``(module, at_top)`` for every import of module ``name`` outside ``TYPE_CHECKING``;
    a ``from X import y`` names ``X.y`` when that is a module of the package."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, *filter(None, [child.module])])
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.append((full if full in MODULES else base, top))
            else:
                visit(child, top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(path.read_text()), True)
    return found


def _internal_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports (at the top or inside functions)."""
    return {
        name: {target for target, _ in _imports(name) if target in MODULES and target != name}
        for name in MODULES
    }


def test_no_import_cycles():
    graph = _internal_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("side", ["protocol", "server"])
def test_the_container_side_imports_only_the_protocol_and_its_libraries(side):
    """protocol/ and server/ run on the image's Python: the standard library, numpy,
    gymnasium, msgpack and Pyro5 (server only); of remote, protocol/ uses errors, server/
    protocol/ and errors (and the package's version)."""
    allowed = {"remote", "remote.errors"} | {m for m in MODULES if m.startswith("remote.protocol")}
    if side == "server":
        allowed |= {m for m in MODULES if m.startswith("remote.server")}
    third_party = SERVER_THIRD_PARTY - ({"Pyro5", "serpent"} if side == "protocol" else set())
    wrong = []
    for name in (m for m in MODULES if m.startswith(f"remote.{side}")):
        for target, _ in _imports(name):
            top = target.split(".")[0]
            if top == "remote":
                if target not in allowed:
                    wrong.append(f"{name} imports {target}")
            elif top not in sys.stdlib_module_names and top not in third_party:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_importing_the_server_loads_nothing_of_the_host():
    code = (
        "import json, sys; import remote.server; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('remote', 'psutil', "
        "'requests', 'sqlite3')))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = json.loads(done.stdout)
    assert "remote.server.main" in loaded  # the check sees what was imported
    host = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HOST_ONLY)]
    assert not host, f"importing remote.server loaded host-side modules: {host}"


def test_only_the_record_speaks_sql():
    speakers = [
        name
        for name, path in MODULES.items()
        if "sqlite3" in {target for target, _ in _imports(name)}
        or any(word in path.read_text() for word in ("INSERT INTO", "SELECT ", "UPDATE ", "DELETE FROM"))
    ]
    assert speakers == ["remote.manager.record"]
