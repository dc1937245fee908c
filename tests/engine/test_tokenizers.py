"""The CLIP tokenizer built from open_clip's merges file gives OpenAI CLIP's own token ids.

The reference is open_clip's `tokenizer.py` (OpenAI's SimpleTokenizer), loaded by file path so
that open_clip's package `__init__` (which needs torchvision) never runs. Each test builds its
own cache under tmp_path; nothing here touches a network.
"""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from linfusion_engine import tokenizers
from linfusion_engine.tokenizers import (
    ClipVocabularyMissing,
    clean_prompt,
    clip_tokenizer,
    ensure_vocabulary,
    prompt_truncation,
)

END = 49407


@pytest.fixture(scope="module")
def reference():
    """open_clip's tokenizer module (imports ftfy, regex, numpy, torch; not open_clip/__init__)."""
    path = tokenizers.bpe_merges_path().parent / "tokenizer.py"
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer_ref", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tok(tmp_path):
    return clip_tokenizer(tmp_path / "cache")


_SUBJECTS = ["a castle on a hill", "portrait of an old fisherman", "a red fox in the snow",
             "cyberpunk street at night", "still life with lemons", "a cat wearing a tiny hat",
             "mountain lake at dawn", "robot reading a book", "Victorian greenhouse interior"]
_STYLES = ["oil painting", "watercolor", "35mm photo", "octane render", "ukiyo-e", "pencil sketch",
           "by Greg Rutkowski", "trending on ArtStation", "8k, highly detailed", "bokeh, f/1.8"]
_EXTRAS = ["café crème brûlée", "Ærøskøbing", "naïve façade, São Paulo", "Crème de la crème",
           "ÀÉÎÕÜ ß İstanbul", "Zürich Straße", "Łódź", "Ελληνικά", "русский лес", "東京の夜景、ネオン",
           "中文提示词", "한국어 프롬프트", "🐱🔥", "👩‍🎨 artist", "🏰✨🌙", "(castle:1.2)", "[forest]",
           "((masterpiece)), (best quality:1.4)", "<lora:style_v2:0.8>", "{red|blue} dress",
           "a—b–c…", "50% off!!!", "! !! !!!", "wow!? yes!", "1920x1080", "3.14159", "#hashtag @user",
           "don't it's we'll",
           "AND", "fish & chips", "C++ / C#", "x^2 + y^2 = z^2", "Ⅻ ½ ²", "e\u0301cole (decomposed)"]
_SPACES = [" ", "  ", "\t", "\n", " \n\t ", ", "]
_WORDS = ("golden light misty forest ancient ruins glowing runes wanderer cloak lantern river stone "
          "bridge moss ivy tower raven storm clouds thunder meadow wildflowers crystal cave dragon "
          "scales ember ash twilight harbor ship sails lighthouse waves gulls market spices silk "
          "copper brass gears clockwork airship canyon desert dunes oasis palm caravan").split()


def _prompts() -> list[str]:
    """~300 deterministic prompts: plain, accented, CJK, emoji, A1111 syntax, odd whitespace, long."""
    rng = random.Random(1234)
    prompts = ["", "a", "A PHOTO OF A CAT", "   leading and trailing   ", *_EXTRAS]
    for _ in range(200):
        parts = [rng.choice(_SUBJECTS), rng.choice(_STYLES), rng.choice(_EXTRAS)]
        rng.shuffle(parts)
        text = rng.choice(_SPACES).join(parts)
        if rng.random() < 0.3:
            text = "".join(c.upper() if rng.random() < 0.5 else c for c in text)
        prompts.append(text)
    for _ in range(60):  # 120 words: past the 77-token window, truncated by both tokenizers
        words = [rng.choice(_WORDS) for _ in range(120)]
        for _ in range(5):
            words.insert(rng.randrange(len(words)), rng.choice(_EXTRAS))
        prompts.append(" ".join(words))
    return prompts


def _until_end(row: list[int]) -> list[int]:
    return row[: row.index(END) + 1]


def test_token_ids_match_openai_clip(tok, tmp_path, reference):
    prompts = _prompts()
    assert len(prompts) > 250
    expected = reference.tokenize(prompts).tolist()  # (N, 77), end token last when truncated, 0-padded
    # the way diffusers calls it
    got = tok(prompts, padding="max_length", max_length=77, truncation=True)["input_ids"]
    mismatched = [p for p, e, g in zip(prompts, expected, got) if _until_end(e) != _until_end(g)]
    assert mismatched == []
    assert sum(len(_until_end(e)) == 77 for e in expected) >= 60  # the long ones were truncated
    # SD-2.x pads with "!" = id 0, which is what open_clip pads with: whole rows agree
    bang = clip_tokenizer(tmp_path / "cache", pad_token="!")
    assert bang(prompts, padding="max_length", max_length=77, truncation=True)["input_ids"] == expected


def test_clean_prompt_gives_openai_tokens_where_transformers_skips_ftfy(tok, reference):
    # transformers 5's CLIPTokenizer normalises only NFC / whitespace / case: these differ raw
    texts = ["“quoted” ‘single’", "東京，夜景！", "Ｆｕｌｌｗｉｄｔｈ", "fish &amp; chips", "&lt;lora&gt;",
             "ﬁne ﬂowers", "Ã©cole mojibake", "ctrl\x1b[31mred", *_prompts()[:40]]
    expected = [_until_end(row) for row in reference.tokenize(texts).tolist()]
    got = [tok(clean_prompt(t))["input_ids"] for t in texts]
    assert got == expected


def test_vocabulary_special_and_pad_ids(tmp_path):
    default = clip_tokenizer(tmp_path)
    assert len(default) == default.vocab_size == 49408
    assert default.model_max_length == 77
    assert (default.bos_token, default.bos_token_id) == ("<|startoftext|>", 49406)
    assert (default.eos_token, default.eos_token_id) == ("<|endoftext|>", 49407)
    assert default.pad_token_id == 49407
    bang = clip_tokenizer(tmp_path, pad_token="!")
    assert (bang.pad_token_id, len(bang)) == (0, 49408)
    assert bang("a cat", padding="max_length", max_length=8)["input_ids"] == [49406, 320, 2368, 49407, 0, 0, 0, 0]
    # "!" pads but is not split out of the prompt (HF's pad_token="!" would make "!!!" three pads)
    expected = [49406, 2781, 995, 256, 748, 49407]  # "wow", "!!!", "!", "!!" as OpenCLIP reads them
    assert bang("wow!!! ! !!")["input_ids"] == default("wow!!! ! !!")["input_ids"] == expected
    with pytest.raises(ValueError, match="not in CLIP's vocabulary"):
        clip_tokenizer(tmp_path, pad_token="<pad>")


def test_byte_symbols_match_reference(reference):
    assert list(tokenizers._bytes_to_unicode().items()) == list(reference.bytes_to_unicode().items())


def test_cache_written_once_and_shared_with_another_process(tmp_path):
    cache = tmp_path / "cache"
    first = clip_tokenizer(cache)
    files = sorted(cache.iterdir())
    assert [f.name for f in files] == ["merges.txt", "vocab.json"]
    stats = [(f.stat().st_mtime_ns, f.stat().st_ino) for f in files]
    second = clip_tokenizer(cache)
    assert [(f.stat().st_mtime_ns, f.stat().st_ino) for f in files] == stats
    prompt = "a lighthouse in a storm, café, 🏰"
    assert second(prompt)["input_ids"] == first(prompt)["input_ids"]

    script = (
        "import json, sys\n"
        "import linfusion_engine.tokenizers as t\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        f"tok = t.clip_tokenizer({str(cache)!r})\n"
        f"print(json.dumps({{'heavy': heavy, 'ids': tok({prompt!r})['input_ids']}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer == {"heavy": [], "ids": first(prompt)["input_ids"]}  # no torch at import time
    assert [(f.stat().st_mtime_ns, f.stat().st_ino) for f in files] == stats


def test_racing_builds_leave_one_whole_cache(tmp_path):
    cache = tmp_path / "cache"
    errors: list[BaseException] = []

    def build():
        try:
            ensure_vocabulary(cache)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(f.name for f in cache.iterdir()) == ["merges.txt", "vocab.json"]
    assert len(clip_tokenizer(cache)) == 49408


@pytest.mark.parametrize("fail_on_write", [1, 2])
def test_failed_build_leaves_no_partial_file(tmp_path, monkeypatch, fail_on_write):
    cache = tmp_path / "cache"
    calls = []
    real_fsync = tokenizers.os.fsync

    def fsync_failing(fd):  # the data is in the temp file when the disk "fills up"
        calls.append(fd)
        if len(calls) == fail_on_write:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(tokenizers.os, "fsync", fsync_failing)
    with pytest.raises(OSError, match="No space left"):
        clip_tokenizer(cache)
    left = sorted(f.name for f in cache.iterdir())
    assert left == ([] if fail_on_write == 1 else ["merges.txt"])  # only whole files, no temp files
    if left:
        assert (cache / "merges.txt").read_text(encoding="utf-8").count("\n") == 48894 + 1

    monkeypatch.setattr(tokenizers.os, "fsync", real_fsync)
    assert len(clip_tokenizer(cache)) == 49408  # the next call finishes the build


def test_prompt_truncation(tok):
    assert prompt_truncation(tok, "a castle on a hill, oil painting") is None
    words = [w for w in _WORDS if len(tok.tokenize(w)) == 1]  # one token each: counts are exact
    assert len(words) > 30
    assert prompt_truncation(tok, " ".join(words[i % len(words)] for i in range(75))) is None

    text = " ".join(words[i % len(words)] for i in range(120))
    info = prompt_truncation(tok, text)
    assert json.loads(json.dumps(info)) == info
    assert (info["tokens"], info["kept"]) == (120, 75)
    dropped = " ".join(words[i % len(words)] for i in range(75, 120))
    assert info["dropped_text"] == dropped
    # and it is exactly what diffusers' truncating call leaves out
    kept_ids = tok(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert tok.decode(kept_ids, skip_special_tokens=True) + " " + info["dropped_text"] == text

    messy = "(masterpiece:1.2), " * 40 + "  a tiny red boat\n"
    info = prompt_truncation(tok, messy)
    assert info["tokens"] > 75 and info["kept"] == 75
    assert info["dropped_text"].endswith("a tiny red boat")


@pytest.mark.parametrize("package_dir", ["empty", None])
def test_missing_vocabulary_names_the_fix(tmp_path, monkeypatch, package_dir):
    located = (tmp_path / "open_clip") if package_dir else None
    if located:
        located.mkdir()
    monkeypatch.setattr(tokenizers, "_open_clip_dir", lambda: located)
    with pytest.raises(ClipVocabularyMissing, match=r"pip install --no-deps open-clip-torch==3\.3\.0"):
        clip_tokenizer(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_default_cache_dir_follows_linstudio_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LINSTUDIO_HOME", str(tmp_path / "home"))
    vocab, merges = ensure_vocabulary()
    assert vocab.parent == tmp_path / "home" / "models" / "tokenizers" / "clip-bpe-16e6" == merges.parent


@pytest.mark.parametrize("pad_token", ["<|endoftext|>", "!"])
def test_saved_tokenizer_reloads_the_same(tmp_path, pad_token):
    """A pipeline saved with this tokenizer (save_pretrained) loads back with the same ids."""
    from transformers import CLIPTokenizer

    tok = clip_tokenizer(tmp_path / "cache", pad_token=pad_token)
    tok.save_pretrained(tmp_path / "saved")
    again = CLIPTokenizer.from_pretrained(tmp_path / "saved")
    prompt = "Ærøskøbing harbour at dusk, (boats:1.1)"  # no "!": a reloaded "!" pad splits it again
    assert again(prompt, padding="max_length", max_length=77)["input_ids"] == tok(
        prompt, padding="max_length", max_length=77)["input_ids"]
    assert (len(again), again.pad_token_id, again.model_max_length) == (49408, tok.pad_token_id, 77)
