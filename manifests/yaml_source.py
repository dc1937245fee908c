"""Safe YAML reading that remembers where every key was written.

PyYAML's `safe_load` forgets positions and expands aliases without limit (a "billion laughs"
document of a few hundred bytes expands to gigabytes). Manifests are written by people and
validated by a command that must answer in about a second, so here the document is composed
into nodes (which carry their line), and the Python data is built from the nodes by hand with
budgets: a size limit on the file, a single document, a limit on nesting and on the number of
values that aliases add, text-only keys, no duplicate keys, no custom tags, and integers only in
decimal (`0x64` stays the text "0x64" rather than becoming 100). libyaml (when
PyYAML was built with it) does the parsing: pure-Python parsing of a 1 MiB file takes seconds.

Alongside the data comes a map `key path -> line` (`assets[2].sizes[0] -> 14`) that turns a
validation error's location into a line number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from manifests.errors import join_key

MAX_BYTES = 1 << 20  # a manifest of thousands of assets is ~1 MB; larger files are mistakes
MAX_ALIAS_VALUES = 10_000  # values reached again through aliases: a billion-laughs guard
MAX_DEPTH = 32  # the format nests 5 deep; anything near this is not a manifest

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
_MERGE_TAG = _TAG + "merge"
_DECIMAL = re.compile(r"^[-+]?(0|[1-9][0-9]*)$")
_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # what YAML counts as a new line
# libyaml also caps nesting at 1000 levels itself, where the pure-Python composer would recurse.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class YamlProblem:
    """A problem found while reading YAML: 1-based line (None for the whole file), key path, sentence."""

    line: int | None
    key_path: str
    message: str


@dataclass
class YamlDocument:
    """The parsed document and where each key path was written.

    `problems` lists everything wrong at the YAML level. `read` is False after a fatal problem (bad
    syntax, a budget exceeded): then there is no data. Otherwise `data` is the document (None for
    an explicit empty document such as `---`), and any problems (duplicate or non-text keys) are
    still errors to report.
    """

    data: Any = None
    lines: dict[str, int] = field(default_factory=dict)
    problems: list[YamlProblem] = field(default_factory=list)
    read: bool = False


class _Fatal(Exception):
    """Stops the walk: a budget is exceeded and the rest of the document is not worth reading."""

    def __init__(self, line: int | None, message: str, key_path: str = "") -> None:
        super().__init__(message)
        self.problem = YamlProblem(line, key_path, message)


def read_yaml_file(path: Path) -> tuple[bytes | None, YamlDocument]:
    """Read and parse a manifest file. Returns the bytes read (None if unreadable) and the document."""
    try:
        with Path(path).open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        return None, YamlDocument(problems=[YamlProblem(None, "", f"cannot read: {exc.strerror or exc}")])
    if len(raw) > MAX_BYTES:
        return None, YamlDocument(problems=[YamlProblem(
            None, "", f"file is larger than {MAX_BYTES // 1024} KiB; split it into several manifests")])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return raw, YamlDocument(problems=[YamlProblem(
            line, "", f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8")])
    return raw, parse_yaml(text)


def parse_yaml(text: str) -> YamlDocument:
    """Parse one YAML document into plain data plus a key-path -> line map, within the budgets."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        return YamlDocument(problems=[YamlProblem(
            None, "", f"document is larger than {MAX_BYTES // 1024} KiB; split it into several manifests")])
    loader = None
    try:
        loader = _Loader(text)  # the reader refuses control characters right here
        root = loader.get_node() if loader.check_node() else None  # check_node drops STREAM-START
        if root is not None and loader.check_node():
            second = _second_document_line(text, root.end_mark.line)
            return YamlDocument(problems=[YamlProblem(
                second, "", "a second YAML document starts here (after `---` or `...`); a manifest is one document")])
    except yaml.MarkedYAMLError as exc:
        return YamlDocument(problems=[_syntax_problem(exc, text)])
    except yaml.reader.ReaderError as exc:  # control characters and the like
        line = text[: exc.position].count("\n") + 1 if isinstance(exc.position, int) else None
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "?")
        return YamlDocument(problems=[YamlProblem(
            line, "", f"character U+{char:04X} is not allowed in YAML (control characters are not text)")])
    except yaml.YAMLError as exc:
        return YamlDocument(problems=[YamlProblem(None, "", f"not valid YAML: {_one_line(str(exc))}")])
    except RecursionError:
        return YamlDocument(problems=[YamlProblem(None, "", f"nested more than {MAX_DEPTH} levels deep")])
    if root is None or (isinstance(root, ScalarNode) and root.tag == _TAG + "null" and not root.value):
        return YamlDocument(problems=[YamlProblem(  # nothing, or a bare `---`
            None, "", "the file holds no YAML document; a manifest starts with `version: 1`")])
    builder = _Builder(loader)
    try:
        data = builder.build(root, "", 0, frozenset())
    except _Fatal as fatal:
        return YamlDocument(problems=builder.problems + [fatal.problem])
    return YamlDocument(data=data, lines=builder.lines, problems=builder.problems, read=True)


def _second_document_line(text: str, after_line: int) -> int:
    """The line of the `---` (or `...`) that ends the first document, for the error message."""
    lines = text.splitlines()
    for number in range(max(after_line - 1, 0), len(lines)):
        if lines[number].startswith(("---", "...")):
            return number + 1
    return after_line + 1


def _syntax_problem(exc: yaml.MarkedYAMLError, text: str) -> YamlProblem:
    mark = exc.problem_mark or exc.context_mark
    # At the end of a file without a final newline, libyaml's mark is one line past the last line.
    last_line = len(_LINE_BREAK.findall(text)) + 1
    line = min(mark.line + 1, last_line) if mark is not None else None
    what = exc.problem or exc.context or "syntax error"
    if exc.context and exc.problem:
        what = f"{exc.problem} ({exc.context})"
    column = f" at column {mark.column + 1}" if mark is not None else ""
    return YamlProblem(line, "", f"YAML syntax error{column}: {_one_line(what)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _short(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag


class _Builder:
    """Builds Python data from composed nodes, counting values and recording lines."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.repeats = 0
        self.lines: dict[str, int] = {}
        self.problems: list[YamlProblem] = []
        self._seen: set[int] = set()

    def build(self, node: Node, key_path: str, depth: int, ancestors: frozenset[int]) -> Any:
        line = node.start_mark.line + 1
        self.lines.setdefault(key_path, line)
        if id(node) in self._seen:  # the composer hands an alias back as the anchored node itself
            self.repeats += 1
            if self.repeats > MAX_ALIAS_VALUES:
                raise _Fatal(line, f"YAML aliases expand to more than {MAX_ALIAS_VALUES} values (an alias "
                                   "bomb?); refusing to read further: write the values out", key_path)
        else:
            self._seen.add(id(node))
        if depth > MAX_DEPTH:
            raise _Fatal(line, f"nested more than {MAX_DEPTH} levels deep", key_path)
        if id(node) in ancestors:
            raise _Fatal(line, "a YAML alias refers to the value that contains it", key_path)
        if isinstance(node, ScalarNode):
            return self._scalar(node, key_path)
        inner = ancestors | {id(node)}
        if isinstance(node, SequenceNode):
            if node.tag != _TAG + "seq":
                raise _Fatal(line, f"YAML tag {_short(node.tag)} is not allowed in manifests", key_path)
            return [self.build(item, join_key(key_path, i), depth + 1, inner)
                    for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            if node.tag != _TAG + "map":
                raise _Fatal(line, f"YAML tag {_short(node.tag)} is not allowed in manifests", key_path)
            return self._mapping(node, key_path, depth, inner)
        raise _Fatal(line, "unexpected YAML node", key_path)  # pragma: no cover - composer makes 3 kinds

    def _scalar(self, node: ScalarNode, key_path: str) -> Any:
        if node.tag not in _SCALAR_TAGS:
            raise _Fatal(node.start_mark.line + 1, f"YAML tag {_short(node.tag)} is not allowed in manifests",
                         key_path)
        if node.tag == _TAG + "int" and not _DECIMAL.match(node.value):
            # YAML 1.1 reads 0x64 as 100, 0755 as 493 and 1:20 as 80: surprises in a manifest (a size
            # `0x64` would be reported as `100`). Such values stay text, and the schema says so.
            return node.value
        try:
            return self.loader.construct_object(node, deep=False)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:  # e.g. a timestamp out of range
            raise _Fatal(node.start_mark.line + 1, f"unreadable value: {_one_line(str(exc))}", key_path)

    def _mapping(self, node: MappingNode, key_path: str, depth: int, ancestors: frozenset[int]) -> dict:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merge_nodes: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merge_nodes.append(value_node)
                continue
            line = key_node.start_mark.line + 1
            key = self._key(key_node, key_path)
            if key is None:
                # Still counted and checked, under the key as written (`true.steps`), not as if it were a sibling.
                written = join_key(key_path, key_node.value) if isinstance(key_node, ScalarNode) else key_path
                self._discard(value_node, written, depth, ancestors)
                continue
            child = join_key(key_path, key)
            if key in first_line:
                self.problems.append(YamlProblem(
                    line, child, f"duplicate key (first written at line {first_line[key]})"))
                self._discard(value_node, child, depth, ancestors)
                continue
            first_line[key] = line
            self.lines[child] = line  # the key's line, not the value's: that is where people look
            result[key] = self.build(value_node, child, depth + 1, ancestors)
        for value_node in merge_nodes:  # `<<: *base` fills in what the mapping does not say itself
            self._merge(value_node, key_path, depth, ancestors, result)
        return result

    def _merge(self, value_node: Node, key_path: str, depth: int, ancestors: frozenset[int],
               result: dict[str, Any]) -> None:
        sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
        for source in sources:
            if not isinstance(source, MappingNode):
                raise _Fatal(source.start_mark.line + 1, "`<<` merges mappings only", key_path)
            own_lines, self.lines = self.lines, {}
            try:
                data = self.build(source, key_path, depth + 1, ancestors)
                source_lines = self.lines
            finally:
                self.lines = own_lines
            for key, value in data.items():
                if key in result:
                    continue
                result[key] = value
                child = join_key(key_path, key)
                for path, line in source_lines.items():  # merged keys point at where they were written
                    if path == child or path.startswith((child + ".", child + "[")):
                        self.lines.setdefault(path, line)

    def _discard(self, value_node: Node, key_path: str, depth: int, ancestors: frozenset[int]) -> None:
        """Walk a value that will not be kept, so budgets and tags are still enforced (a fatal problem
        inside it stops the read as anywhere else). Its other problems are not reported: the key above
        it already is, and their key paths would name places the document does not have."""
        own_lines, own_problems = self.lines, self.problems
        self.lines, self.problems = {}, []
        try:
            self.build(value_node, key_path, depth + 1, ancestors)
        finally:
            self.lines, self.problems = own_lines, own_problems

    def _key(self, key_node: Node, key_path: str) -> str | None:
        line = key_node.start_mark.line + 1
        if isinstance(key_node, ScalarNode) and key_node.tag == _TAG + "str":
            return key_node.value
        if isinstance(key_node, ScalarNode):
            shown = key_node.value or "null"
            self.problems.append(YamlProblem(
                line, key_path, f"key {shown} is not text; quote it (\"{shown}\") or rename it"))
        else:
            self.problems.append(YamlProblem(line, key_path, "a key must be text, not a list or mapping"))
        return None
