"""Write shapes-world images with caption sidecars: the data folder `linstudio distill` reads.

    python -m toy.dataset OUT --count 2000 [--size 128] [--start 0] [--jitter]

Each image is `OUT/NNNNNNNN.png` (NNNNNNNN = its seed) with its prompt in `OUT/NNNNNNNN.txt`, the
layout distill reads for any studio's own data. Seeds below `toy.train_shapes.TRAIN_SEED_LIMIT`
belong to the training world; the quality bench draws from above it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from toy.shapes import draw, scene_from_seed


def write_dataset(out: Path, count: int, *, size: int = 128, start: int = 0, jitter: bool = True) -> list[Path]:
    """Write `count` images from seed `start` on; existing files are rewritten identically."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for seed in range(start, start + count):
        scene = scene_from_seed(seed, jitter=jitter)
        image_path = out / f"{seed:08d}.png"
        draw(scene, size, size).save(image_path)
        (out / f"{seed:08d}.txt").write_text(scene.prompt + "\n")
        written.append(image_path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--jitter", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    paths = write_dataset(args.out, args.count, size=args.size, start=args.start, jitter=args.jitter)
    print(f"wrote {len(paths)} images with captions to {args.out}")


if __name__ == "__main__":
    main()
