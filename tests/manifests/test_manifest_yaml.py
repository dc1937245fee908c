"""Safe YAML reading: data, lines per key path, and refusals of unsafe or malformed documents."""

from __future__ import annotations

import time

import pytest

from manifests.yaml_source import MAX_ALIAS_VALUES, MAX_BYTES, MAX_DEPTH, parse_yaml, read_yaml_file


def billion_laughs(levels: int = 9) -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels + 1):
        name, prev = chr(97 + i), chr(96 + i)
        text += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
    return text


def only_problem(text: str):
    document = parse_yaml(text)
    assert not document.read and document.data is None
    assert len(document.problems) == 1, document.problems
    return document.problems[0]


def test_data_and_lines_of_every_key_path():
    document = parse_yaml("version: 1\nassets:\n  - id: a\n    sizes: [64x64,\n            128x64]\n  - id: b\n")
    assert document.problems == [] and document.read
    assert document.data == {"version": 1, "assets": [{"id": "a", "sizes": ["64x64", "128x64"]}, {"id": "b"}]}
    assert document.lines["version"] == 1
    assert document.lines["assets"] == 2
    assert document.lines["assets[0]"] == 3
    assert document.lines["assets[0].sizes"] == 4
    assert document.lines["assets[0].sizes[1]"] == 5
    assert document.lines["assets[1].id"] == 6


def test_merge_keys_fill_in_and_point_at_where_values_were_written():
    document = parse_yaml("base: &base\n  steps: 4\n  model: sd15\nassets:\n  - <<: *base\n    steps: 8\n")
    assert document.problems == []
    assert document.data["assets"][0] == {"steps": 8, "model": "sd15"}
    assert document.lines["assets[0].steps"] == 6  # the asset's own value wins, with its own line
    assert document.lines["assets[0].model"] == 3  # the merged value points at the anchor


def test_billion_laughs_is_refused_fast():
    started = time.perf_counter()
    problem = only_problem(billion_laughs())
    assert time.perf_counter() - started < 1.0
    assert f"aliases expand to more than {MAX_ALIAS_VALUES} values" in problem.message
    assert "alias bomb" in problem.message


def test_a_few_aliases_are_fine():
    document = parse_yaml("sizes: &s [64x64]\nassets:\n  - sizes: *s\n  - sizes: *s\n")
    assert document.problems == []
    assert document.data["assets"][1]["sizes"] == ["64x64"]


def test_recursive_alias_is_refused():
    problem = only_problem("a: &x [1, *x]\n")
    assert problem.message == "a YAML alias refers to the value that contains it"
    assert problem.key_path == "a[1]"


def test_deep_nesting_is_refused():
    problem = only_problem("a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n")
    assert f"nested more than {MAX_DEPTH} levels deep" in problem.message


def test_very_deep_flow_nesting_is_a_yaml_error_not_a_crash():
    problem = only_problem("[" * 200_000 + "]" * 200_000)
    assert problem.line == 1
    assert problem.message.startswith("YAML syntax error")


def test_huge_files_are_refused_without_reading_them_whole(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"# padding\n" * (MAX_BYTES // 10 + 10))
    raw, document = read_yaml_file(path)
    assert raw is None
    assert document.problems[0].message == "file is larger than 1024 KiB; split it into several manifests"


def test_multiple_documents_are_refused_at_the_second():
    problem = only_problem("version: 1\nteam: film\n---\nversion: 1\n")
    assert problem.line == 3
    assert "a manifest is one document" in problem.message


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n", "---\n", "--- # nothing\n...\n"])
def test_empty_files(text):
    problem = only_problem(text)
    assert problem.message == "the file holds no YAML document; a manifest starts with `version: 1`"


def test_syntax_errors_name_line_and_column():
    problem = only_problem("version: 1\nteam: [film\nproject: x\n")
    assert problem.line is not None and problem.line >= 2
    assert problem.message.startswith("YAML syntax error at column")


def test_bad_indentation_is_a_syntax_error():
    problem = only_problem("a: b: c\n")
    assert (problem.line, problem.message) == (1, "YAML syntax error at column 5: mapping values are not "
                                                  "allowed in this context")


def test_control_characters_are_refused_with_their_line():
    problem = only_problem("version: 1\nteam: fi\x00lm\n")
    assert problem.line == 2
    assert problem.message == "character U+0000 is not allowed in YAML (control characters are not text)"


def test_non_utf8_files_are_refused(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("version: 1\nproject: caf\xe9\n".encode("latin-1"))
    _, document = read_yaml_file(path)
    assert document.problems[0].line == 2
    assert document.problems[0].message == "not UTF-8 text (byte 0xe9); save the file as UTF-8"


@pytest.mark.parametrize("tag", ["!!python/object:os.system", "!!python/name:os.system", "!custom", "!!set"])
def test_custom_and_python_tags_are_refused(tag):
    problem = only_problem(f"version: 1\nteam: {tag} film\n" if "set" not in tag else f"team: {tag} {{a: null}}\n")
    assert problem.message == f"YAML tag {tag} is not allowed in manifests"


def test_duplicate_keys_are_errors_with_both_lines():
    document = parse_yaml("team: film\nproject: a\nteam: game\n")
    assert [(p.line, p.key_path, p.message) for p in document.problems] == [
        (3, "team", "duplicate key (first written at line 1)")]
    assert document.data["team"] == "film"


def test_non_text_keys_are_errors():
    document = parse_yaml("version: 1\n1: x\nnull: y\n? [a, b]\n: z\n")
    messages = [(p.line, p.message) for p in document.problems]
    assert (2, 'key 1 is not text; quote it ("1") or rename it') in messages
    assert (3, 'key null is not text; quote it ("null") or rename it') in messages
    assert (4, "a key must be text, not a list or mapping") in messages
    assert document.data == {"version": 1}


def test_integers_are_decimal_only():
    document = parse_yaml("sizes: [0x64]\nseeds: [0755, 1:20, 12, -3, +4]\n")
    assert document.data == {"sizes": ["0x64"], "seeds": ["0755", "1:20", 12, -3, 4]}


def test_invalid_timestamp_is_an_error_not_a_traceback():
    problem = only_problem("a: 2001-13-45\n")
    assert problem.key_path == "a"
    assert problem.message.startswith("unreadable value:")
