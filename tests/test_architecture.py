"""The import graph keeps the directions written down in docs/architecture.md.

Every `import` and `from ... import` in the packages counts, the function-local ones included
(they are arrows all the same: they only postpone the circle to the first call). Two checks:
- a room imports only the rooms below it (`ALLOWED`, read from docs/architecture.md);
- no circle between modules anywhere (a module importing its own package's submodule is fine;
  `from pkg import name` counts as an arrow to `pkg.name` when that is a module, else to `pkg`).
And the settings are handed in from the edge: `get_settings()` is called only by the modules
that `EDGES` in docs/architecture.md lists (glob patterns: the CLI, the flows' entry points, the web
app's startup).
"""

from __future__ import annotations

import ast
import fnmatch
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def _doc_block(name: str) -> list[str]:
    """The lines of the fenced block after `<!-- NAME -->` in docs/architecture.md."""
    match = re.search(rf"<!-- {name} -->\s*```[a-z]*\n(.*?)```", DOC, re.S)
    assert match, f"docs/architecture.md has no {name} block"
    return [line.strip() for line in match.group(1).splitlines() if line.strip() and not line.startswith("#")]


def allowed_directions() -> dict[str, set[str]]:
    allowed = {}
    for line in _doc_block("rooms"):
        room, _, below = line.partition("->")
        allowed[room.strip()] = {r.strip() for r in below.split(",") if r.strip() and r.strip() != "(nothing)"}
    return allowed


ALLOWED = allowed_directions()
ROOMS = tuple(ALLOWED)
EDGES = set(_doc_block("edges"))


def modules() -> dict[str, Path]:
    found = {}
    for room in ROOMS:
        for path in (ROOT / room).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = modules()


def imports(path: Path) -> set[str]:
    """The project modules `path` imports (see the module docstring for how `from` counts)."""
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
            names = subs + ([node.module] if len(subs) < len(node.names) else [])
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `import a.b.c` of a name inside a module
                name = name.rpartition(".")[0]
            if name:
                targets.add(name)
    return targets


GRAPH = {name: imports(path) for name, path in MODULES.items()}


def room_of(module: str) -> str:
    return module.split(".")[0]


def test_the_doc_names_every_package():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages <= set(ROOMS), f"packages missing from docs/architecture.md's rooms: {sorted(packages - set(ROOMS))}"


def missing_rooms() -> set[str]:
    return {f"missing room {room}" for room in ROOMS if not (ROOT / room / "__init__.py").is_file()}


def wrong_arrows() -> set[str]:
    return {f"arrow {module} -> {target}" for module, targets in GRAPH.items() for target in targets
            if room_of(target) != room_of(module) and room_of(target) not in ALLOWED[room_of(module)]}


def module_circles() -> set[str]:
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str, counter=[0]) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target.startswith(node + "."):
                continue  # a package's __init__ re-exporting its own submodules is not a circle
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    return {"circle " + " <-> ".join(c) for c in circles}


def _calls_get_settings(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name == "get_settings":
                return True
    return False


def settings_fetched_inside() -> set[str]:
    return {f"get_settings() in {name}" for name, path in MODULES.items() if _calls_get_settings(path)
            and not any(fnmatch.fnmatchcase(name, pattern) for pattern in EDGES)}


def test_the_house_reads_one_way():
    """No arrow against the directions in docs/architecture.md, no circle, no settings lookup off the edges."""
    found = sorted(missing_rooms() | wrong_arrows() | module_circles() | settings_fetched_inside())
    assert not found, "against the directions in docs/architecture.md:\n  " + "\n  ".join(found)
