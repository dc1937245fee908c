"""OpenAI CLIP's tokenizer, built offline from the BPE merges that `open-clip-torch` ships.

A single-file Stable Diffusion checkpoint (A1111 / ComfyUI `.safetensors`) carries the text
encoder's weights but no tokenizer, and no hub is reachable here to fetch one. Every SD family
uses the same tokenizer, OpenAI CLIP's BPE (SD-1.5; SD-2.x and SD-XL's OpenCLIP encoders were
trained with the very same vocabulary), and its merges lie on PyPI in `open-clip-torch` as
`open_clip/bpe_simple_vocab_16e6.txt.gz`. This module turns that file into the `vocab.json` /
`merges.txt` pair that transformers reads, once per machine, and loads a `CLIPTokenizer` from it.

`open_clip` is never imported: its `__init__` pulls in torchvision, which this project does not
install. The package is found with `importlib.util.find_spec`, which reads no code.

transformers 5's `CLIPTokenizer` is the Rust-backed one and does no ftfy / HTML clean-up (only
NFC, whitespace and lower case), so text such as curly quotes, full-width CJK punctuation,
`&amp;` or ligatures tokenizes differently from OpenAI's own tokenizer — exactly as it does for a
diffusers model folder loaded from the hub. `clean_prompt` applies OpenAI's clean-up for callers
who want the training-time tokens.

Also here: `prompt_truncation`, the long-prompt warning for render metadata (diffusers cuts a
prompt at 77 tokens without telling anyone).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
OPEN_CLIP_PIN = "open-clip-torch==3.3.0"
CACHE_NAME = "clip-bpe-16e6"
CLIP_MAX_LENGTH = 77  # CLIP's context: start token + 75 content tokens + end token
CLIP_VOCAB_SIZE = 49_408
BOS_TOKEN = "<|startoftext|>"  # id 49406
EOS_TOKEN = "<|endoftext|>"  # id 49407
# OpenAI's SimpleTokenizer keeps the merges after the header line up to this bound: 49,152 - 256
# byte symbols - 2 specials = 48,894 merges; the file holds ~262k lines, the rest are unused.
_MERGES_END = 49152 - 256 - 2 + 1
_MERGES_HEADER = "#version: 0.2"  # what transformers expects as the first line of merges.txt


class ClipVocabularyMissing(FileNotFoundError):
    """The BPE merges file is not installed; the message names the pip command that fixes it."""


def _open_clip_dir() -> Path | None:
    """The `open_clip` package folder, found without executing its `__init__` (torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def bpe_merges_path() -> Path:
    """Where OpenAI CLIP's merges lie, or a ClipVocabularyMissing that says how to install them."""
    package_dir = _open_clip_dir()
    path = package_dir / BPE_FILE_NAME if package_dir is not None else None
    if path is None or not path.is_file():
        where = f"not found at {path}" if path is not None else "package open_clip not installed"
        raise ClipVocabularyMissing(
            f"OpenAI CLIP's BPE vocabulary (open_clip/{BPE_FILE_NAME}) is missing: {where}. "
            f"Install it with `pip install --no-deps {OPEN_CLIP_PIN}` (--no-deps: only the data "
            "file is used, and its dependencies would pull in torchvision)."
        )
    return path


def default_cache_dir() -> Path:
    """`$LINSTUDIO_HOME/models/tokenizers/clip-bpe-16e6` (read from the environment, so the
    engine does not depend on the studio's settings package)."""
    home = Path(os.environ.get("LINSTUDIO_HOME") or "~/.linstudio").expanduser()
    return home / "models" / "tokenizers" / CACHE_NAME


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable character map, in the order CLIP numbers it.

    The printable Latin-1 bytes map to themselves; the other 68 bytes get the code points from
    256 upward, so no byte maps to whitespace or a control character that BPE would choke on.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return {b: mapping[b] for b in printable + [b for b in range(256) if b not in printable]}


def _vocabulary_files(bpe_path: Path) -> tuple[str, str]:
    """The text of `vocab.json` and `merges.txt`, numbered the way OpenAI CLIP numbers its tokens.

    Order: the 256 byte symbols, the same with the end-of-word mark `</w>`, one token per merge
    (the pair joined), then start and end of text — so ids match the text encoder's embeddings.
    """
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1:_MERGES_END]  # line 0 is the file's own header
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{bpe_path}: built {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE}")
    return json.dumps(vocab, ensure_ascii=False), "\n".join([_MERGES_HEADER, *merges]) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temp file in the same folder and rename it over `path`.

    A reader sees either no file or a whole one; two processes racing write the same bytes, and
    whichever rename lands last wins. A failure leaves no temp file behind.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_vocabulary(cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """`vocab.json` and `merges.txt` in `cache_dir`, built from the merges file if not there yet.

    Built at most once: existing files are never rewritten (their mtimes stay), so many render
    processes can share one cache. Both files must be present; a half-built cache is rebuilt.
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    if vocab_path.is_file() and merges_path.is_file():
        return vocab_path, merges_path
    vocab_text, merges_text = _vocabulary_files(bpe_merges_path())
    folder.mkdir(parents=True, exist_ok=True)
    # merges first: vocab.json present is then never a sign that merges.txt is on its way
    if not merges_path.is_file():
        _write_atomic(merges_path, merges_text)
    if not vocab_path.is_file():
        _write_atomic(vocab_path, vocab_text)
    return vocab_path, merges_path


def clip_tokenizer(cache_dir: str | Path | None = None, *, pad_token: str = EOS_TOKEN) -> Any:
    """OpenAI CLIP's tokenizer as a `transformers.CLIPTokenizer` (77 tokens, 49,408 ids).

    Args:
        cache_dir: where vocab.json / merges.txt live (default `default_cache_dir()`); built there
            on first use.
        pad_token: `<|endoftext|>` (id 49407) for SD-1.5 and SD-XL's first tokenizer; `!` (id 0)
            for SD-2.x and SD-XL's second one — the pad id changes the padded positions' embeddings.

    A "!"-padded tokenizer is right in memory only: `save_pretrained` records `pad_token: "!"`
    and `from_pretrained` turns that back into a special token that splits "!" out of prompts.
    Call this again rather than reloading a saved copy.
    """
    from transformers import CLIPTokenizer

    vocab_path, merges_path = ensure_vocabulary(cache_dir)
    # Paths positionally: in transformers 5, vocab_file=/merges_file= keywords are silently ignored
    # (a 3-entry vocabulary). model_max_length: unset, diffusers' padding to it overflows.
    tokenizer = CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=CLIP_MAX_LENGTH)
    if len(tokenizer) != CLIP_VOCAB_SIZE:
        raise ValueError(
            f"{vocab_path}: the CLIP tokenizer loaded {len(tokenizer)} tokens, expected "
            f"{CLIP_VOCAB_SIZE}; delete {vocab_path.parent} to rebuild it"
        )
    if pad_token != EOS_TOKEN:
        # Set by id, not `CLIPTokenizer(pad_token="!")`: that registers "!" as a special token,
        # which is then split out of the prompt itself ("wow!!!" -> three pads; diffusers#4153)
        # where OpenCLIP, which SD-2.x / SD-XL were trained with, reads "!!!" as one token.
        pad_id = tokenizer.get_vocab().get(pad_token)
        if pad_id is None:
            raise ValueError(f"pad_token {pad_token!r} is not in CLIP's vocabulary (use {EOS_TOKEN!r} or '!')")
        tokenizer.pad_token_id = pad_id
    return tokenizer


def clean_prompt(text: str) -> str:
    """OpenAI CLIP's text clean-up (ftfy, HTML entities), which transformers 5 no longer applies.

    Tokenize `clean_prompt(text)` to get the tokens the text encoders saw in training for text
    with curly quotes, full-width punctuation, ligatures, `&amp;` or mojibake; ordinary text comes
    back unchanged (the tokenizer itself handles case, whitespace and NFC).
    """
    import ftfy

    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def prompt_truncation(tokenizer: Any, text: str) -> dict[str, Any] | None:
    """What a pipeline will cut off `text`, or None when it fits the tokenizer's window.

    diffusers tokenizes with `truncation=True, max_length=tokenizer.model_max_length` and drops
    the rest silently. The dict (JSON-ready, for render metadata) says how many content tokens
    the prompt has, how many are kept, and the dropped text. One tokenizer call, no truncation.
    """
    kept = tokenizer.model_max_length - tokenizer.num_special_tokens_to_add()  # 75 for CLIP
    # verbose=False: no "sequence longer than the maximum" log line, the point is to report it here
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) <= kept:
        return None
    # skip_special_tokens=False: a "!"-padded tokenizer counts id 0 ("!") as special and would drop it
    dropped = tokenizer.decode(ids[kept:], skip_special_tokens=False).strip()
    return {"tokens": len(ids), "kept": kept, "dropped_text": dropped}
