"""Training images and their captions, read in an order that depends on the seed and the step only.

Two layouts, the ones studios already keep for fine-tuning:
- a folder of images, each with a caption sidecar of the same stem (`cat.png` + `cat.txt`,
  searched recursively); an image without a sidecar is an error naming it, not a silent skip,
  because a caption-less image would train the layers on the empty prompt;
- a JSONL file, one `{"image": PATH, "caption": TEXT}` object a line; relative paths are relative
  to the JSONL file's folder (`file_name` / `text` are accepted too: the Hugging Face imagefolder
  `metadata.jsonl` names).

Determinism is what makes `--resume` continue the same curve: the sample at global position p is
`permutation(seed, epoch)[p mod n]`, so any step's batch can be recomputed from (seed, step)
without replaying the ones before it, on any number of processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_SUFFIXES = (".txt", ".caption")
_JSONL_IMAGE_KEYS = ("image", "file_name", "path")
_JSONL_CAPTION_KEYS = ("caption", "text")


class DistillDataError(ValueError):
    """The training data cannot be used as given; the message names the file (and line)."""


@dataclass(frozen=True)
class Example:
    """One training image and its caption."""

    image: Path
    caption: str


def _sidecar(image: Path) -> Path | None:
    for suffix in CAPTION_SUFFIXES:
        candidate = image.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _from_folder(folder: Path) -> list[Example]:
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    examples, missing = [], []
    for image in images:
        sidecar = _sidecar(image)
        if sidecar is None:
            missing.append(image)
            continue
        examples.append(Example(image, sidecar.read_text(encoding="utf-8").strip()))
    if missing:
        shown = ", ".join(str(p.relative_to(folder)) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DistillDataError(f"{folder}: {len(missing)} image(s) have no caption sidecar "
                               f"({'/'.join(CAPTION_SUFFIXES)} with the same name): {shown}{more}")
    return examples


def _first_key(record: dict, keys: tuple[str, ...]):
    for key in keys:
        if key in record:
            return record[key]
    return None


def _from_jsonl(path: Path) -> list[Example]:
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DistillDataError(f"{path}:{number}: not valid JSON: {exc}") from None
        if not isinstance(record, dict):
            raise DistillDataError(f"{path}:{number}: expected a JSON object with 'image' and 'caption'")
        image, caption = _first_key(record, _JSONL_IMAGE_KEYS), _first_key(record, _JSONL_CAPTION_KEYS)
        if not isinstance(image, str) or not isinstance(caption, str):
            raise DistillDataError(f"{path}:{number}: needs string fields 'image' and 'caption', got keys "
                                   f"{', '.join(sorted(record)) or 'none'}")
        image_path = Path(image).expanduser()
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        if not image_path.is_file():
            raise DistillDataError(f"{path}:{number}: image '{image}' does not exist ({image_path})")
        examples.append(Example(image_path, caption.strip()))
    return examples


def find_examples(data: str | Path) -> list[Example]:
    """The examples of a data folder (images + caption sidecars) or a JSONL file, sorted and checked.

    A folder holding a `metadata.jsonl` is read through that file.
    """
    path = Path(data).expanduser()
    if path.is_dir() and (path / "metadata.jsonl").is_file():
        path = path / "metadata.jsonl"
    if path.is_file():
        if path.suffix.lower() not in (".jsonl", ".json"):
            raise DistillDataError(f"{path}: expected a folder of images with caption sidecars or a .jsonl file")
        examples = _from_jsonl(path)
    elif path.is_dir():
        examples = _from_folder(path)
    else:
        raise DistillDataError(f"--data {data}: no such folder or JSONL file")
    if not examples:
        raise DistillDataError(f"{path}: no training images found ({', '.join(IMAGE_SUFFIXES)})")
    return examples


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """An image as a (3, R, R) float tensor in [-1, 1]: short side resized to R, centre-cropped.

    Centre crop rather than squash: squashing teaches the layers distorted content.
    """
    from PIL import Image

    with Image.open(path) as handle:
        image = handle.convert("RGB")
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (R, R, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, R, R)


class CaptionedImages(Dataset):
    """Map-style data set of (pixels (3, R, R) in [-1, 1], caption, index)."""

    def __init__(self, examples: list[Example], resolution: int) -> None:
        if resolution <= 0 or resolution % 8:
            raise DistillDataError(f"resolution {resolution}: must be a positive multiple of 8")
        self.examples = examples
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        try:
            pixels = load_image(example.image, self.resolution)
        except OSError as exc:
            raise DistillDataError(f"{example.image}: cannot read the image: {exc}") from None
        return {"pixels": pixels, "caption": example.caption, "index": index}


def permutation(count: int, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch `epoch`: a permutation of range(count) from (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch]).permutation(count)


def sample_index(position: int, count: int, seed: int) -> int:
    """The data-set index at global sample position `position` (positions run over all epochs)."""
    epoch, offset = divmod(position, count)
    return int(permutation(count, seed, epoch)[offset])


class StepSampler(Sampler[int]):
    """Indices for one process, from micro-batch `start_batch` on, forever.

    Global micro-batch b holds positions [b * world * B, (b + 1) * world * B); process `rank`
    takes the slice [rank * B, (rank + 1) * B) of it. A DataLoader with batch_size B over this
    sampler therefore yields, for every process, exactly the batch the step asks for.
    """

    def __init__(self, count: int, seed: int, batch_size: int, start_batch: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        self.count, self.seed, self.batch_size = count, seed, batch_size
        self.start_batch, self.rank, self.world = start_batch, rank, world

    def __iter__(self) -> Iterator[int]:
        batch = self.start_batch
        cached_epoch, order = -1, None
        while True:
            first = (batch * self.world + self.rank) * self.batch_size
            for position in range(first, first + self.batch_size):
                epoch, offset = divmod(position, self.count)
                if epoch != cached_epoch:
                    cached_epoch, order = epoch, permutation(self.count, self.seed, epoch)
                yield int(order[offset])
            batch += 1

    def __len__(self) -> int:  # infinite; DataLoader only needs this for len(), never called here
        raise TypeError("StepSampler is infinite")
