"""The shapes world's definitions and its deterministic generator (seed -> scene -> image, prompt).

The definitions are exact, because other tools rely on them:
- one object on a flat background, both from `PALETTE`, always different colours;
- `circle`: a disc whose diameter is the side s; `square`: axis-aligned, side s; `triangle`: apex at
  the top centre of an s-by-s box, base along the box's bottom edge;
- s is 0.35 of the canvas's short side; the box centre sits at one of `POSITIONS` (fractions of
  width and height, the same on non-square canvases); training data may jitter s to 0.30-0.40 and
  the centre by up to +-0.04;
- the prompt is exactly `a {color} {shape} {phrase}, {background} background`, or, with the
  colour words left out, `a {shape} {phrase}`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "yellow": (240, 210, 40),
    "orange": (240, 130, 30),
    "purple": (140, 60, 190),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Anchor:
    """Where a position puts the object's box centre, as fractions of width and height."""

    x: float
    y: float
    phrase: str


POSITIONS: dict[str, Anchor] = {
    "left": Anchor(0.25, 0.5, "on the left"),
    "right": Anchor(0.75, 0.5, "on the right"),
    "top": Anchor(0.5, 0.25, "at the top"),
    "bottom": Anchor(0.5, 0.75, "at the bottom"),
    "center": Anchor(0.5, 0.5, "in the center"),
}
SIDE_FRACTION = 0.35  # s as a fraction of the canvas's short side
JITTER_SIDE = (0.30, 0.40)  # training data only
JITTER_CENTRE = 0.04  # training data only: +- this fraction of width / height
# Each pixel is drawn at SUPERSAMPLE x SUPERSAMPLE points and averaged: anti-aliased edges, as a
# renderer (and the model) would make them, while the flat areas keep the palette colour exactly.
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """One shapes-world image, before it is drawn.

    Args:
        color: the object's palette colour.
        shape: circle, square or triangle.
        position: a key of POSITIONS.
        background: the background's palette colour (never the object's).
        side: s as a fraction of the short side (0.35 unless jittered).
        dx, dy: the box centre's offset from the anchor, as fractions of width and height.
    """

    color: str
    shape: str
    position: str
    background: str
    side: float = SIDE_FRACTION
    dx: float = 0.0
    dy: float = 0.0

    def __post_init__(self) -> None:
        if self.color not in PALETTE or self.background not in PALETTE:
            raise ValueError(f"colours must come from the palette {COLORS}: {self.color!r}, {self.background!r}")
        if self.color == self.background:
            raise ValueError(f"the object and the background must differ (both {self.color!r})")
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}: {self.shape!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {tuple(POSITIONS)}: {self.position!r}")

    @property
    def prompt(self) -> str:
        """`a red circle on the left, blue background`."""
        return f"a {self.color} {self.shape} {POSITIONS[self.position].phrase}, {self.background} background"

    @property
    def colorless_prompt(self) -> str:
        """`a circle on the left`: the prompt with the colour words left out."""
        return f"a {self.shape} {POSITIONS[self.position].phrase}"

    def box(self, width: int, height: int) -> tuple[float, float, float]:
        """(centre x, centre y, side) in pixels on a width x height canvas."""
        anchor = POSITIONS[self.position]
        return ((anchor.x + self.dx) * width, (anchor.y + self.dy) * height, self.side * min(width, height))

    def exact(self) -> "Scene":
        """The same scene without jitter: what its prompt asks for."""
        return replace(self, side=SIDE_FRACTION, dx=0.0, dy=0.0)


def coverage(shape: str, centre_x: float, centre_y: float, side: float, width: int, height: int,
             supersample: int = SUPERSAMPLE) -> np.ndarray:
    """The fraction of each pixel the shape covers, (height, width) float32 in [0, 1].

    Pixel (i, j) spans [j, j+1) x [i, i+1); it is sampled at supersample^2 evenly spaced points.
    supersample=1 samples pixel centres only: the hard (binary) mask.
    """
    offsets = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)  # (width * supersample,)
    ys = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1)  # (height * supersample,)
    x = xs[None, :] - centre_x  # (1, W*ss): offsets from the box centre
    y = ys[:, None] - centre_y  # (H*ss, 1)
    half = side / 2
    if shape == "circle":
        inside = x * x + y * y <= half * half
    elif shape == "square":
        inside = (np.abs(x) <= half) & (np.abs(y) <= half)
    elif shape == "triangle":
        # Apex (0, -half), base from (-half, half) to (half, half): at height y the half-width grows
        # linearly from 0 at the apex to `half` at the base.
        depth = (y + half) / side  # 0 at the apex, 1 at the base
        inside = (depth >= 0) & (depth <= 1) & (np.abs(x) <= depth * half)
    else:
        raise ValueError(f"unknown shape {shape!r}; shapes: {SHAPES}")
    samples = inside.astype(np.float32)  # (H*ss, W*ss)
    # (H*ss, W*ss) -> (H, ss, W, ss) -> mean over each pixel's samples -> (H, W)
    return samples.reshape(height, supersample, width, supersample).mean(axis=(1, 3))


def object_mask(scene: Scene, width: int, height: int) -> np.ndarray:
    """The scene's hard object mask, (height, width) bool: the ground-truth silhouette."""
    return coverage(scene.shape, *scene.box(width, height), width, height, supersample=1) > 0.5


def draw(scene: Scene, width: int, height: int) -> Image.Image:
    """The scene as an RGB image: palette colours exactly, edges anti-aliased."""
    alpha = coverage(scene.shape, *scene.box(width, height), width, height)[..., None]  # (H, W, 1)
    fg = np.array(PALETTE[scene.color], dtype=np.float32)
    bg = np.array(PALETTE[scene.background], dtype=np.float32)
    pixels = alpha * fg + (1 - alpha) * bg  # (H, W, 3)
    return Image.fromarray(np.round(pixels).astype(np.uint8), "RGB")


def control_map(scene: Scene, width: int, height: int) -> Image.Image:
    """The scene's `seg` control map: its hard silhouette, white (255) on black, as an RGB image."""
    mask = object_mask(scene, width, height).astype(np.uint8) * 255  # (H, W)
    return Image.fromarray(mask, "L").convert("RGB")


def other_geometry(scene: Scene, rng: random.Random) -> Scene:
    """`scene`'s colours with another shape at another position (no jitter): a prompt that a control
    map must overrule, or a reference that may lend its colours and nothing else."""
    shape = rng.choice([s for s in SHAPES if s != scene.shape])
    position = rng.choice([p for p in POSITIONS if p != scene.position])
    return Scene(scene.color, shape, position, scene.background)


def jittered(scene: Scene, rng: random.Random) -> Scene:
    """`scene` with its size and centre jittered as training data may be (JITTER_SIDE, JITTER_CENTRE)."""
    return replace(scene, side=rng.uniform(*JITTER_SIDE), dx=rng.uniform(-JITTER_CENTRE, JITTER_CENTRE),
                   dy=rng.uniform(-JITTER_CENTRE, JITTER_CENTRE))


def scene_from_seed(seed: int, *, jitter: bool = False) -> Scene:
    """The scene of `seed`: every attribute uniform, the background any colour but the object's.

    Deterministic across machines and Python versions (`random.Random(seed)` with explicit draws).
    With `jitter`, s is drawn from JITTER_SIDE and the centre moves by up to JITTER_CENTRE.
    """
    rng = random.Random(seed)
    color = rng.choice(COLORS)
    background = rng.choice([c for c in COLORS if c != color])
    shape = rng.choice(SHAPES)
    position = rng.choice(tuple(POSITIONS))
    if not jitter:
        return Scene(color, shape, position, background)
    return Scene(color, shape, position, background, side=rng.uniform(*JITTER_SIDE),
                 dx=rng.uniform(-JITTER_CENTRE, JITTER_CENTRE), dy=rng.uniform(-JITTER_CENTRE, JITTER_CENTRE))


def example(seed: int, width: int = 128, height: int = 128, *, jitter: bool = False) -> tuple[Image.Image, str, Scene]:
    """(image, prompt, scene) for `seed`: the generator's one-call form."""
    scene = scene_from_seed(seed, jitter=jitter)
    return draw(scene, width, height), scene.prompt, scene
