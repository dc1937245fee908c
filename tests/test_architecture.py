"""The import graph keeps the directions written down in docs/architecture.md.

Every `import` and `from ... import` in the packages counts, the function-local ones included
(they are arrows all the same: they only postpone the circle to the first call). Two checks:
- a room imports only the rooms below it (`ALLOWED`, read from docs/architecture.md);
- no circle between modules anywhere (a module importing its own package's submodule is fine;
  `from pkg import name` counts as an arrow to `pkg.name` when that is a module, else to `pkg`).
And the settings are handed in from the edge: `get_settings()` is called only by the modules
that `EDGES` in docs/architecture.md lists (glob patterns: the CLI, the flows' entry points, the web
app's startup). And no file of the project (rooms, tests, bench, infra) imports a `_private` name
from another of our modules: a leading underscore says "only this module relies on it", and an
import from elsewhere quietly breaks that promise (make the name public, or move it).
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


def wrong_arrows(graph: dict[str, set[str]] = GRAPH) -> set[str]:
    return {f"arrow {module} -> {target}" for module, targets in graph.items() for target in targets
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


def test_a_planted_wrong_arrow_is_caught():
    """The engine builds `builtin:` models through an entry point, never by importing the devkit."""
    planted = {"linfusion_engine.engine": {"linfusion_devkit.tiny"}, "linfusion_devkit.tiny": {"linfusion_engine.loading"}}
    assert wrong_arrows(planted) == {"arrow linfusion_engine.engine -> linfusion_devkit.tiny"}


# Top-level names that are ours: the rooms, the folders beside them and the tests' helper modules
# (`import model_files` works because pytest puts tests/ on the path).
OUR_NAMES = set(ROOMS) | {"tests", "bench", "infra"} | {p.stem for p in (ROOT / "tests").glob("*.py")}
# Private imports allowed for now: none (the last two, Pillow's limit lock and a shard's cancel, were
# made public). The set may only shrink (`test_the_known_private_imports_still_exist`).
KNOWN_PRIVATE_IMPORTS: set[str] = set()


def private_imports(source: str, where: str) -> set[str]:
    """`from X import _name` in `source` where X is one of ours (a relative import always is).

    Dunder names (`__version__`) are public by convention; `from __future__ import annotations`
    is not ours.
    """
    found = set()
    for node in ast.walk(ast.parse(source, where)):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = "." * node.level + (node.module or "")
        if not node.level and module.split(".")[0] not in OUR_NAMES:
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not (alias.name.startswith("__") and alias.name.endswith("__")):
                found.add(f"{where} imports {module}.{alias.name}")
    return found


def project_files() -> list[Path]:
    return sorted({*MODULES.values(), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py"),
                   *(ROOT / "infra").rglob("*.py")})


def all_private_imports() -> set[str]:
    return {found for path in project_files()
            for found in private_imports(path.read_text(), str(path.relative_to(ROOT)))}


def test_private_imports_are_found():
    planted = ("from __future__ import annotations\n"
               "from linfusion_engine.loading import _dtype_kwarg, hub_offline\n"
               "from linstudio_settings import __version__\n"
               "from .sibling import _helper\n"
               "from torch.utils._pytree import _private_but_not_ours\n"
               "def f():\n    from catalogue.store import _make_s3_client as make\n")
    assert private_imports(planted, "planted.py") == {
        "planted.py imports linfusion_engine.loading._dtype_kwarg",
        "planted.py imports .sibling._helper",
        "planted.py imports catalogue.store._make_s3_client",
    }


def test_no_module_imports_a_private_name_of_another():
    found = sorted(all_private_imports() - KNOWN_PRIVATE_IMPORTS)
    assert not found, "private names imported across modules (make them public or move them):\n  " + "\n  ".join(found)


def test_the_known_private_imports_still_exist():
    gone = sorted(KNOWN_PRIVATE_IMPORTS - all_private_imports())
    assert not gone, "made public: take these off KNOWN_PRIVATE_IMPORTS in tests/test_architecture.py:\n  " + "\n  ".join(gone)


def test_every_function_local_import_of_our_modules_says_why():
    """An import of our modules sits at the top of its module unless it keeps an import-time budget
    (docs/architecture.md, "Imports at the top"), and then a `# lazy:` comment says which."""
    import sys

    sys.path.insert(0, str(ROOT / "infra"))
    from import_census import census

    unexplained = [f"{i.path}:{i.line} {i.function}(): {i.text}" for found in census().values()
                   for i in found if i.function is not None and not i.lazy_comment]
    assert not unexplained, "function-local imports without a '# lazy:' reason:\n" + "\n".join(unexplained)
