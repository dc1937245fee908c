"""Manifest fuzzing, wider than tests/manifests/test_manifest_fuzz.py: hand-written YAML, near-valid
manifests with real inputs on disk, and raw bytes, through every door a manifest comes in by.

The doors: `load_manifests` (what `validate` and `plan` share), `flows.batch.load_and_expand`
(what `linstudio run` calls, unsupported features included), `linstudio validate` / `validate
--json` / `plan --json` in process, and a few dozen files through the real `linstudio validate`
subprocess. The properties, for every input:
- no traceback: only `ManifestError`s (or `ManifestsInvalid` from the runner's loader), exit 0 or 1;
- no hang: a per-example deadline (a hang guard, far above the normal milliseconds);
- every error is located: when the file is a YAML mapping, each error names a key path whose
  parents exist in the document (a missing key's parent, a wrong value's own place), or at
  least the line of a key that cannot be named (a key that is not text); otherwise (not YAML,
  not UTF-8, not a mapping) it names the file, with a line and key path where the reader had one;
- a manifest that passes expands to job records the catalogue accepts and JSON can carry.

LINSTUDIO_FUZZ_EXAMPLES=N runs N examples per in-process property (default: a ~60 s budget in all)
and explores fresh random inputs instead of the fixed, reproducible ones.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from PIL import Image
from typer.testing import CliRunner

from linstudio.cli import app
from manifests import expand_jobs, load_manifests
from manifests.errors import ManifestError, display_path
from manifests.yaml_source import read_yaml_file
from linstudio.settings import get_settings

EXAMPLES = int(os.environ.get("LINSTUDIO_FUZZ_EXAMPLES", "0"))
# A hang guard per example, not a speed target: normal answers take milliseconds.
DEADLINE = timedelta(seconds=10)


def fuzz(default_examples: int):
    """Hypothesis settings: `default_examples` (or LINSTUDIO_FUZZ_EXAMPLES), reproducible unless raised."""
    return settings(max_examples=EXAMPLES or default_examples, deadline=DEADLINE, derandomize=not EXAMPLES,
                    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                          HealthCheck.function_scoped_fixture])


class Tally:
    """Examples tried and distinct findings (a traceback, a hang, an unlocated error) for the fault log."""

    def __init__(self) -> None:
        self.examples: Counter = Counter()
        self.findings: set[str] = set()

    def __call__(self, door: str, check, *args, count: int = 1) -> None:
        """Run `check(*args)` as `count` examples of `door`; a failure is a finding (and fails the test)."""
        self.examples[door] += count
        try:
            check(*args)
        except BaseException as exc:
            self.findings.add(f"{door}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            raise


TALLY = Tally()


@pytest.fixture(scope="module", autouse=True)
def record_the_fuzzing(fault_log):
    yield
    total = sum(TALLY.examples.values())
    fault_log.record("manifest fuzz", jobs_in_flight=0, lost=len(TALLY.findings), recovery_seconds=None,
                     outcome=f"{total} fuzzed manifests, {len(TALLY.findings)} finding(s)",
                     examples=total, findings=len(TALLY.findings), by_door=dict(TALLY.examples),
                     finding_list=sorted(TALLY.findings))


# -- inputs on disk that near-valid manifests point at ----------------------------------------------------------


def _png(size=(16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 60, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A manifest folder with good and bad input files next to it, and one outside it."""
    root = tmp_path_factory.mktemp("fuzz")
    folder = root / "team"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "ok.png").write_bytes(_png())
    (folder / "refs" / "cut.png").write_bytes(_png((64, 64))[:70])
    (folder / "refs" / "text.png").write_text("not an image\n")
    (folder / "refs" / "dir.png").mkdir()
    (root / "outside.png").write_bytes(_png())
    (folder / "refs" / "escape.png").symlink_to(root / "outside.png")
    return folder


REFERENCES = ["refs/ok.png", "refs/cut.png", "refs/text.png", "refs/dir.png", "refs/escape.png", "refs/none.png",
              "../outside.png", "/etc/hostname", "s3://refs-bucket/mood.png", "s3://x/y", "http://example.com/a.png",
              "refs/ok.png\x00", "", "~/ok.png", "refs//ok.png", "./refs/ok.png", "C:\\refs\\ok.png"]

# -- values: real ones, wrong types, extremes ---------------------------------------------------------------------

EXTREME_TEXT = st.sampled_from([
    "", " ", "\t", "\u202etxt.png", "ａｓｓｅｔ", "٦٤x٦٤", "６４x６４", "64X64", " 64 x 64 ", "64x64x64", "0x64", "1e3x8",
    "8x" + "9" * 5000, "9" * 5000, "x" * 5000, "😀" * 50, "tiny-sd15\u200b", "e\u0301", "\U0010ffff", "NaN",
    "null", "~", "yes", "2001-12-14", "1:20", "0o17", "<<", "*a", "&a", "!!binary", "#", "- x", "a: b", "'", '"',
])
HUGE_NUMBERS = st.sampled_from([2**31, 2**32 - 1, 2**32, 2**63, 2**64 + 1, -(2**63) - 1, 10**100, -1, 0, 1e308,
                                -1e308, 5e-324, -0.0, float("inf"), float("-inf"), float("nan"), 1.5, 64.0, 8.0001])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), HUGE_NUMBERS, st.floats(),
                    st.text(st.characters(exclude_categories=("Cs",)), max_size=40), EXTREME_TEXT)
ANY_VALUE = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)

# Per setting: values that pass (`good`) and values that should not (`bad`: wrong types, out of range,
# misspelt, files that are missing or not images).
GOOD = {
    "model": st.sampled_from(["tiny-sd15", "tiny-sdxl"]),
    "steps": st.integers(1, 200),
    "guidance": st.floats(0, 30),
    "scheduler": st.sampled_from(["euler", "ddim"]),
    "attention": st.sampled_from(["auto", "linear", "softmax"]),
    "negative_prompt": st.text(max_size=30),
    "sizes": st.lists(st.sampled_from(["64x64", "128x64", "64x128", "16384x16384", "8x8", "６４x６４"]), min_size=1,
                      max_size=3, unique=True),
    "seeds": st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4, unique=True),
    "variants": st.integers(1, 64),
    "strategy": st.sampled_from(["auto", "direct", "sdedit", "highres"]),
    "tags": st.lists(st.text(min_size=1, max_size=64), max_size=4),
    "tileable": st.sampled_from([True, False, "x", "y"]),
    "controlnet": st.one_of(
        st.lists(st.fixed_dictionaries({"type": st.sampled_from(["canny", "depth"]),
                                        "image": st.sampled_from(["refs/ok.png", "s3://refs-bucket/c.png"])},
                                       optional={"scale": st.floats(0, 2)}), min_size=1, max_size=2),
        st.fixed_dictionaries({"type": st.just("canny"), "image": st.just("refs/ok.png")})),
    "ip_adapter": st.fixed_dictionaries({"images": st.lists(st.sampled_from(["refs/ok.png", "./refs/ok.png"]),
                                                            min_size=1, max_size=2)},
                                        optional={"scale": st.floats(0, 2)}),
    "init_image": st.fixed_dictionaries({"image": st.just("refs/ok.png")},
                                        optional={"strength": st.floats(0.01, 1), "mask": st.just("refs/ok.png")}),
    "lora": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["tiny-style", "detail"])},
                                           optional={"scale": st.floats(0, 2)}), min_size=1, max_size=2),
    "id": st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
    "prompt": st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60),
}
BAD = {
    "model": st.sampled_from(["tiny-sd16", "sd15", "TINY-SD15", "../models", "a b", ""]),
    "steps": st.one_of(st.sampled_from([0, 201, -1, "30"]), HUGE_NUMBERS),
    "guidance": st.one_of(st.sampled_from([-0.1, 30.5, "7", True]), HUGE_NUMBERS),
    "scheduler": st.sampled_from(["Euler", "eulr", "lms", ""]),
    "attention": st.sampled_from(["flash", "Linear", ""]),
    "negative_prompt": st.just("x" * 4001),
    "sizes": st.lists(st.one_of(st.sampled_from(["100x100", "0x64", "64", "16392x8", "64x64", "64x64"]),
                                EXTREME_TEXT, st.integers(0, 99999)), max_size=34),
    "seeds": st.lists(st.one_of(st.integers(-1, 2**32 + 1), HUGE_NUMBERS), max_size=66),
    "variants": st.one_of(st.sampled_from([0, 65, -1]), HUGE_NUMBERS),
    "strategy": st.sampled_from(["tiled", "Auto", ""]),
    "tags": st.lists(st.one_of(st.just(""), st.just("t" * 65), SCALARS), min_size=1, max_size=34),
    "tileable": st.sampled_from(["xy", 1, 0, "true", "no"]),
    "controlnet": st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["canny", "cany", "pose", ""]), "image": st.sampled_from(REFERENCES)},
        optional={"scale": st.one_of(st.floats(-1, 3), HUGE_NUMBERS), "extra": SCALARS}), max_size=5),
    "ip_adapter": st.fixed_dictionaries({}, optional={
        "images": st.lists(st.sampled_from(REFERENCES), max_size=9), "scale": st.one_of(st.floats(-1, 3), SCALARS)}),
    "init_image": st.fixed_dictionaries({}, optional={
        "image": st.sampled_from(REFERENCES), "strength": st.one_of(st.floats(-0.5, 1.5), SCALARS),
        "mask": st.sampled_from(REFERENCES)}),
    "lora": st.one_of(st.lists(st.fixed_dictionaries({"name": st.sampled_from(["x", "../l", ""])},
                                                     optional={"scale": st.floats(-1, 3)}), max_size=9), SCALARS),
    "id": st.one_of(st.sampled_from(["a b", "é", "x" * 129, ""]), SCALARS),
    "prompt": st.one_of(st.just(""), st.just("p" * 4001), SCALARS),
}
SETTINGS = [name for name in GOOD if name not in ("id", "prompt")]
FIELD_NAMES = [*GOOD, "version", "team", "project", "defaults", "assets", "type", "image", "scale", "images",
               "strength", "mask", "name"]


@st.composite
def near_valid_manifests(draw) -> dict:
    """A valid manifest with up to three things wrong: a bad value for a real setting, anything at all
    for one, a real key missing, an unknown key. About a third have nothing wrong, so expansion runs too."""
    defaults = {"model": draw(GOOD["model"]), "sizes": draw(GOOD["sizes"])}
    for name in draw(st.lists(st.sampled_from(SETTINGS), unique=True, max_size=3)):
        defaults[name] = draw(GOOD[name])
    assets = []
    for _ in range(draw(st.integers(1, 3))):
        asset = {"id": draw(GOOD["id"]), "prompt": draw(GOOD["prompt"])}
        for name in draw(st.lists(st.sampled_from(SETTINGS), unique=True, max_size=3)):
            asset[name] = draw(GOOD[name])
        if "seeds" in asset and "variants" in asset:
            del asset["variants"]
        assets.append(asset)
    doc = {"version": 1, "team": draw(st.sampled_from(["film", "game", "vr", "ad"])), "project": "night-city",
           "defaults": defaults, "assets": assets}
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        where = draw(st.sampled_from(["top", "defaults", *range(len(assets))]))
        target = doc if where == "top" else defaults if where == "defaults" else assets[where]
        action = draw(st.sampled_from(["bad", "bad", "anything", "drop", "unknown"]))
        if where == "top":
            name = draw(st.sampled_from(["version", "team", "project", "defaults", "assets"]))
        else:
            name = draw(st.sampled_from([*SETTINGS, *(["id", "prompt"] if target is not defaults else [])]))
        if action == "drop":
            target.pop(name, None)
        elif action == "unknown":
            target[draw(st.one_of(st.sampled_from(["defalts", "asset", "seed", "size", "Model"]),
                                  st.text(max_size=8)))] = draw(ANY_VALUE)
        elif action == "anything" or name not in BAD:
            target[name] = draw(ANY_VALUE)
        else:
            target[name] = draw(BAD[name])
    return doc


# -- hand-written YAML: what people type, not what a dumper quotes --------------------------------------------

# Plain scalars as people type them: they parse, but YAML reads many as something else (null, bool,
# float, date, sexagesimal int), or as tags the reader must refuse.
TYPED_SCALARS = ["~", "null", "yes", "No", "on", "true", ".inf", "-.inf", ".nan", "0x40", "0o17", "017", "1_000",
                 "1:20", "1e400", "-0", "+12", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "64x64", "６４x６４",
                 "1" * 5000, "!!binary aGVsbG8=", "!!str 5", "!!int 07", "!!float 1e5", "!custom x",
                 "!!python/object:os.system x", "!!set {a}", "&a 1", "[]", "{}", "{a: 1}", "[1, {b: 2}]",
                 "'single'", '"\\u00e9\\t"', '"\\U0001F600"', '"\\x00"', "tiny-sd15", "canny", "refs/ok.png",
                 "refs/cut.png", "euler", "film", "1", "8", "64", "4294967296", "-1", "0.5", "'it''s'", "a #b",
                 "\u00a0x", "[64x64, 128x64]", "[1, 2, 3]", "{type: canny, image: refs/ok.png}"]
# Scalars that break the document (most of the time): what a typo or a paste leaves.
BREAKING_SCALARS = ["*undefined", "[1, 2", "@at", "`tick", "%", "- x", "a: b: c", "? x", "|", ">-", "'", '"',
                    "{a: 1", "]", "\t", "&", "!!"]
RAW_KEYS = [*FIELD_NAMES, *FIELD_NAMES, "<<", "1", "null", "~", '"a.b"', "'x y'", "ü", "true", "[a]", "? [a]",
            "{a: 1}", "-", "a\tb", ""]


@st.composite
def raw_yaml(draw) -> str:
    """Block YAML written line by line from real and odd keys and scalars, anchors, aliases, tags, merges,
    flow collections and comments, with now and then a typo that breaks it; most of it parses."""
    lines: list[str] = []
    anchors: list[str] = []  # defined so far: an alias to one of them resolves

    # Hypothesis favours small draws, so the rare, breaking choices sit at the top of each roll.
    def scalar() -> str:
        roll = draw(st.integers(0, 19))
        if roll == 19:
            return draw(st.sampled_from(BREAKING_SCALARS))
        if roll >= 16:
            return draw(st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=12))
        if roll >= 14 and anchors:
            return "*" + draw(st.sampled_from(anchors))
        return draw(st.sampled_from(TYPED_SCALARS))

    def tag() -> str:
        roll = draw(st.integers(0, 11))
        if roll == 11:
            anchors.append(f"a{len(anchors)}")
            return f" &{anchors[-1]}"
        return " !!omap" if roll == 10 else ""

    def emit(depth: int, indent: int, in_list: bool) -> None:
        for _ in range(draw(st.integers(1, 4 if depth < 3 else 2))):
            slip = draw(st.integers(0, 29)) == 29 and indent > 0
            pad = " " * (indent + (draw(st.sampled_from([-1, 1])) if slip else 0))
            lead = pad + ("- " if in_list else "")
            key = "" if in_list and draw(st.integers(0, 3)) == 3 else draw(st.sampled_from(RAW_KEYS)) + ":"
            if depth < 4 and draw(st.integers(0, 2)) == 2:
                if key:
                    lines.append(f"{lead}{key}{tag()}")
                    emit(depth + 1, indent + 2, draw(st.booleans()))
                else:
                    lines.append(lead.rstrip() + tag())
                    emit(depth + 1, indent + 2, False)
            else:
                comment = draw(st.sampled_from(["", "", "", "", "  # note"]))
                lines.append(f"{lead}{key} {scalar()}{comment}" if key else f"{lead}{scalar()}{comment}")

    prefix = draw(st.sampled_from(["", "", "", "---\n", "%YAML 1.1\n---\n", "\ufeff", "# manifest\n"]))
    if draw(st.integers(0, 3)):
        lines += ["version: 1", f"team: {draw(st.sampled_from(['film', 'game', 'x']))}", "project: p",
                  "defaults: {model: tiny-sd15, sizes: [64x64]}"]
    emit(0, 0, False)
    suffix = draw(st.sampled_from(["", "", "", "", "", "", "\n", "\n---\nversion: 1\n", "\n...\n", " "]))
    return prefix + "\n".join(lines) + suffix


NOT_YAML = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda head, body: head + body,
              st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x89PNG\r\n\x1a\n", b"\x1f\x8b\x08",
                               b"%PDF-1.4\n", b"PK\x03\x04", b"\x00\x00\x00", b"version: 1\n\x00", b"\xc0\xaf"]),
              st.binary(max_size=300)),
    st.builds(lambda text, codec: text.encode(codec, "replace"),
              st.sampled_from(["version: 1\nteam: film\nproject: p\nassets: []\n", "version: 1\nteam: fïlm\n"]),
              st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"])),
)


# -- the properties ------------------------------------------------------------------------------------------------


def split_key_path(key_path: str) -> list[str | int]:
    """`assets[2]["a.b"].sizes` -> ["assets", 2, "a.b", "sizes"] (manifests.errors.join_key's inverse)."""
    parts: list[str | int] = []
    position = 0
    token = re.compile(r'\.?([A-Za-z0-9_-]+)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')
    while position < len(key_path):
        match = token.match(key_path, position)
        assert match and (match.group(1) is None or position == 0 or key_path[position] == "."), (
            f"key path {key_path!r} does not parse at {position}")
        name, index, quoted = match.groups()
        parts.append(name if name is not None else int(index) if index is not None else json.loads(quoted))
        position = match.end()
    return parts


def assert_located(error: ManifestError, path: Path, data) -> None:
    """The error names its place: a key path into the mapping (its parents exist), or a line; the file if
    there is no mapping."""
    shown = str(error)
    assert "\n" not in shown and "Traceback" not in shown, shown
    assert error.message.strip(), shown
    assert error.path == path, shown
    assert shown.startswith(display_path(path)), shown
    if not isinstance(data, dict):  # not read (or not a mapping): about the whole file, or a located YAML problem
        assert error.key_path == "" or error.line is not None, shown
        split_key_path(error.key_path)
        return
    if not error.key_path:
        assert error.line is not None, f"an error in a mapping with neither key path nor line: {shown}"
        return
    node = data
    for part in split_key_path(error.key_path)[:-1]:
        if part == 0 and isinstance(node, dict):
            continue  # `controlnet: {...}` is shorthand for a list of one: its paths say `controlnet[0]`
        if isinstance(part, int):
            assert isinstance(node, list) and part < len(node), f"{shown}: no {part} in the document"
        else:
            assert isinstance(node, dict) and part in node, f"{shown}: no {part!r} in the document"
        node = node[part]


def check_loaders(path: Path) -> None:
    """load_manifests and the runner's load_and_expand answer without a traceback, every error located,
    and what passes expands to records the catalogue accepts."""
    from catalogue.jobs import validate_record
    from flows.batch import ManifestsInvalid, load_and_expand

    _, document = read_yaml_file(path)
    data = document.data if document.read else None
    result = load_manifests([path], settings=get_settings())
    if currently_in_test_context():  # what kind of answer (`--hypothesis-show-statistics` shows the spread)
        event("unreadable as YAML" if not document.read else "not a mapping" if not isinstance(data, dict)
              else "valid" if not result.errors else "invalid mapping")
    for error in result.errors:
        assert isinstance(error, ManifestError), repr(error)
        assert_located(error, path, data)
    try:
        expanded = load_and_expand([path], get_settings())
    except ManifestsInvalid as invalid:
        assert invalid.errors, "ManifestsInvalid without errors"
        for error in invalid.errors:
            assert isinstance(error, ManifestError), repr(error)
            assert_located(error, path, data)
        return
    assert not result.errors
    for loaded, jobs in expanded:
        assert jobs == expand_jobs(loaded)
        for index, job in enumerate(jobs):
            record = job.to_record()
            validate_record(record, index)
            json.dumps(record, allow_nan=False, default=str)


def check_cli(path: Path) -> None:
    """`validate`, `validate --json` and `plan --json` in process: exit 0 or 1, no exception, valid JSON."""
    runner = CliRunner()
    for args in (["validate", str(path)], ["validate", "--json", str(path)], ["plan", "--json", str(path)]):
        result = runner.invoke(app, args)
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
        assert result.exit_code in (0, 1), (args, result.exit_code, result.output[-2000:])
        assert "Traceback" not in result.output
        if "--json" in args:
            answer = json.loads(result.stdout)
            assert answer["valid"] is (result.exit_code == 0)
        elif result.exit_code == 1:
            assert result.stderr.strip(), "exit 1 without a message"


@pytest.fixture(scope="module")
def manifest_path(workdir) -> Path:
    return workdir / "m.yaml"


@given(doc=near_valid_manifests())
@fuzz(600)
def test_near_valid_manifests_through_the_loaders(manifest_path, doc):
    manifest_path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    TALLY("near-valid YAML, loaders", check_loaders, manifest_path)


@given(text=raw_yaml())
@fuzz(600)
def test_hand_written_yaml_through_the_loaders(manifest_path, text):
    manifest_path.write_text(text, encoding="utf-8")
    TALLY("hand-written YAML, loaders", check_loaders, manifest_path)


@given(data=NOT_YAML)
@fuzz(300)
def test_bytes_that_are_not_yaml_through_the_loaders(manifest_path, data):
    manifest_path.write_bytes(data)
    TALLY("bytes, loaders", check_loaders, manifest_path)


@given(choice=st.one_of(near_valid_manifests().map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode()),
                        raw_yaml().map(str.encode), NOT_YAML))
@fuzz(200)
def test_any_of_them_through_the_cli_in_process(manifest_path, choice):
    manifest_path.write_bytes(choice)
    TALLY("any, CLI in process", check_cli, manifest_path)


# -- the real subprocess, a few dozen files --------------------------------------------------------------------------

SUBPROCESS_FILES = 4  # per `linstudio validate` call


@given(files=st.lists(st.one_of(near_valid_manifests().map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode()),
                                raw_yaml().map(str.encode), NOT_YAML),
                      min_size=SUBPROCESS_FILES, max_size=SUBPROCESS_FILES))
@settings(max_examples=max(EXAMPLES // 100, 9), deadline=timedelta(seconds=60), derandomize=not EXAMPLES,
          database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                HealthCheck.function_scoped_fixture])
def test_files_through_the_real_cli(workdir, files):
    paths = []
    for index, data in enumerate(files):
        path = workdir / f"sub-{index}.yaml"
        path.write_bytes(data)
        paths.append(path)

    def check() -> None:
        done = subprocess.run([str(Path(sys.executable).parent / "linstudio"), "validate", "--json", *map(str, paths)],
                              capture_output=True, text=True, timeout=60, cwd=workdir)
        assert done.returncode in (0, 1), done.stderr[-3000:]
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        answer = json.loads(done.stdout)
        assert [entry["path"] for entry in answer["manifests"]] == [p.name for p in paths]
        for entry in answer["manifests"]:
            assert entry["valid"] is (not entry["errors"])
            for error in entry["errors"]:
                assert error["text"].startswith(entry["path"]) and error["message"]

    TALLY("real CLI", check, count=len(paths))


# -- what fuzzing found, pinned ------------------------------------------------------------------------------------


def test_highres_on_a_model_that_is_not_sdxl_is_a_validation_error(workdir):
    """Found by fuzzing: validation passed it, then `plan` died on the planner's ValueError (and `run`
    would have failed every such job at render time)."""
    path = workdir / "highres.yaml"
    path.write_text("version: 1\nteam: film\nproject: p\ndefaults:\n  model: tiny-sd15\n  sizes: [64x64]\n"
                    "  strategy: highres\nassets:\n  - {id: a, prompt: x}\n  - {id: b, prompt: y, model: tiny-sdxl}\n")
    (error,) = load_manifests([path], settings=get_settings()).errors
    assert (error.line, error.key_path) == (7, "defaults.strategy")
    assert error.message == "strategy 'highres' is the SD-XL recipe; model 'tiny-sd15' is sd15: use sdedit (or auto)"
    check_cli(path)
    result = CliRunner().invoke(app, ["plan", "--json", str(path)])
    assert result.exit_code == 1 and json.loads(result.stdout)["errors"][0]["key_path"] == "defaults.strategy"


def test_nothing_under_a_key_that_is_not_text_is_reported_as_a_sibling(workdir):
    """Found by fuzzing: problems inside the value of a non-text key (`true:`) were reported at key paths
    built as if that value sat in the parent (`steps.model`), places the document does not have."""
    path = workdir / "boolean-key.yaml"
    path.write_text("true:\n  model: ~\n  steps:\n    model:\n      true: ~\n")
    errors = load_manifests([path], settings=get_settings()).errors
    assert [(e.line, e.key_path, e.message) for e in errors if "not text" in e.message] == [
        (1, "", 'key true is not text; quote it ("true") or rename it')]
    check_loaders(path)
