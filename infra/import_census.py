"""Where the imports between our own modules sit: at module level, or inside functions.

Prints, per package, how many `import` / `from ... import` statements that name one of our modules
(a package of `PACKAGES`, or a relative import) sit at module level and how many sit inside a
function, and how many of the function-local ones say why in a `# lazy: ...` comment (on the
import's lines, or in the comment lines just above it or above the run of imports it is part of).
With --list, then lists the function-local ones, one a line: `path:line function()  import ...`,
with `[lazy]` where such a comment says why.

"Module level" is anything outside a function body: a class body, an `if TYPE_CHECKING:` block or
a `try:` at module level count as module level. One statement counts once however many names it
imports. The rule (docs/architecture.md, "Imports at the top"): an import of our modules sits at
the top of its module unless it keeps a measured import-time budget, and then it says so.

    .venv/bin/python infra/import_census.py [--list] [PACKAGE ...]
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("linfusion_engine", "linfusion_devkit", "manifests", "flows", "catalogue", "linstudio",
            "linstudio_settings", "linstudio_jobs")
LAZY_MARK = "# lazy:"


@dataclass(frozen=True)
class Import:
    path: str
    line: int
    function: str | None  # the innermost enclosing function, None at module level
    text: str
    lazy_comment: bool


def ours(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] in PACKAGES
    return any(alias.name.split(".")[0] in PACKAGES for alias in node.names)


def has_lazy_comment(lines: list[str], node: ast.stmt) -> bool:
    """`# lazy:` on the statement's own lines, or in the comment lines right above it or above the
    run of one-line imports it belongs to (one comment may explain a few imports in a row)."""
    end = node.end_lineno or node.lineno
    if any(LAZY_MARK in line for line in lines[node.lineno - 1:end]):
        return True
    above = node.lineno - 2
    while above >= 0 and lines[above].strip().startswith(("#", "from ", "import ")):
        if LAZY_MARK in lines[above]:
            return True
        above -= 1
    return False


def imports_of(path: Path) -> list[Import]:
    source = path.read_text()
    lines = source.splitlines()
    found: list[Import] = []

    def walk(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                walk(child, child.name if function is None else f"{function}.{child.name}")
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                if ours(child):
                    found.append(Import(str(path.relative_to(REPO)), child.lineno, function,
                                        ast.unparse(child), has_lazy_comment(lines, child)))
            else:
                walk(child, function)

    walk(ast.parse(source, str(path)), None)
    return found


def census(packages: tuple[str, ...] = PACKAGES) -> dict[str, list[Import]]:
    return {package: [imp for path in sorted((REPO / package).rglob("*.py")) for imp in imports_of(path)]
            for package in packages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="*", default=list(PACKAGES), help="packages to count (default: all)")
    parser.add_argument("--list", action="store_true", help="list the function-local imports too")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.packages) - set(PACKAGES))
    if unknown:
        parser.error(f"not one of our packages: {', '.join(unknown)}")
    found = census(tuple(args.packages))
    print(f"{'package':<20} {'module level':>12} {'in functions':>12} {'of them lazy:':>13}")
    totals = [0, 0, 0]
    for package, imports in found.items():
        local = [i for i in imports if i.function]
        row = [len(imports) - len(local), len(local), sum(i.lazy_comment for i in local)]
        totals = [t + r for t, r in zip(totals, row)]
        print(f"{package:<20} {row[0]:>12} {row[1]:>12} {row[2]:>13}")
    print(f"{'total':<20} {totals[0]:>12} {totals[1]:>12} {totals[2]:>13}")
    if args.list:
        print()
        for imports in found.values():
            for i in imports:
                if i.function:
                    print(f"{i.path}:{i.line} {i.function}()  {i.text}{'  [lazy]' if i.lazy_comment else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
