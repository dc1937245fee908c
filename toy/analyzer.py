"""Reads any RGB image back into shapes-world attributes, so a picture can be scored against its prompt.

The reader assumes nothing about where the image came from: the generator's exact drawings and a
small diffusion model's approximations go through the same steps, so the yardstick does not
favour either. The steps, each a small function below:

1. downscale large images to a short side of `ANALYSIS_SHORT_SIDE` (the answer does not need
   more pixels, and the cost stays flat from 64x64 to 2048x2048);
2. the background is the median of a thin ring of border pixels: the object covers at most a
   small part of any edge, even when it touches one, so the median ignores it;
3. the object is what is far from the background (on a lightly smoothed copy, so noise does not
   make specks); its colour is the median of its eroded core (anti-aliased or blurred edges are
   mixtures, not the colour);
4. the silhouette is then re-cut halfway between background and object colour, which puts the
   edge of a blurred shape back where it was drawn, and its bounding box (extended past the
   canvas edge when the edge cuts the object off) gives centre and side;
5. the shape is the ideal shape (`toy.shapes.coverage`) that, fitted to that box (or to the
   silhouette's area and centroid), overlaps it best (IoU); the position is the nearest anchor
   to the box centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from toy.shapes import PALETTE, POSITIONS, SHAPES, SIDE_FRACTION, Scene, coverage

# Images whose short side is larger than this are downscaled so their short side is ANALYSIS_SHORT_SIDE.
ANALYSIS_SHORT_SIDE = 128
DOWNSCALE_ABOVE = 160
# The border ring whose median is the background: this fraction of the short side (at least 2 px).
RING_FRACTION = 0.03
# Gaussian smoothing (px on the analysis canvas) before thresholding: noise std 12 drops to ~4.
SMOOTH_SIGMA = 1.0
# Components smaller than this fraction of the expected object area s^2 are specks, not objects.
SPECK_FRACTION = 0.005
# Erosion (px) of the object before its colour is read: edges are blends with the background.
CORE_EROSION = 2

_PALETTE_NAMES: tuple[str, ...] = tuple(PALETTE)
_PALETTE_RGB = np.array([PALETTE[name] for name in _PALETTE_NAMES], dtype=np.float32)  # (colours, 3)
# Each ideal shape's area over s^2, and how far its centroid sits below its box centre over s
# (the triangle's centroid is 2/3 of the way down from the apex: -s/2 + 2s/3 = s/6).
_AREA_PER_SIDE_SQUARED: dict[str, float] = {"circle": float(np.pi / 4), "square": 1.0, "triangle": 0.5}
_CENTROID_BELOW_CENTRE: dict[str, float] = {"circle": 0.0, "square": 0.0, "triangle": 1 / 6}


@dataclass(frozen=True)
class Reading:
    """What the analyzer saw in one image.

    Args:
        found: whether there is any object at all (False for a flat image).
        background: nearest palette colour of the background.
        color: nearest palette colour of the object (the largest one), None if not found.
        shape: circle, square or triangle, None if not found.
        shape_iou: IoU of the object's silhouette with the chosen ideal shape (0.0 if not found).
        position: the nearest key of POSITIONS to the object's box centre, None if not found.
        objects: separate objects on the canvas (specks ignored); 1 for a well-formed scene.
        centre: the object's box centre as fractions of width and height, None if not found.
        side: the object's box side as a fraction of the short side (None if not found): the mean
            of the box's width and height, or its uncut extent where the canvas edge cuts it.
    """

    found: bool
    background: str
    color: str | None
    shape: str | None
    shape_iou: float
    position: str | None
    objects: int
    centre: tuple[float, float] | None = None
    side: float | None = None


@dataclass(frozen=True)
class _Box:
    """A silhouette's bounding box in pixels: continuous centre and mean side."""

    centre_x: float
    centre_y: float
    side: float


def analyze(image: Image.Image | np.ndarray) -> Reading:
    """Read one RGB image (PIL image or (H, W, 3) uint8 array, any size) into a `Reading`."""
    pixels = _analysis_pixels(image)  # (H, W, 3) float32
    height, width = pixels.shape[:2]
    smooth = ndimage.gaussian_filter(pixels, sigma=(SMOOTH_SIGMA, SMOOTH_SIGMA, 0))  # (H, W, 3)
    background_rgb = _background_rgb(pixels)
    background = _nearest_colour(background_rgb)

    far = _distance(smooth, background_rgb) > _far_threshold(background)  # (H, W) bool
    components = _objects(far, _min_object_pixels(width, height))
    if not components:
        return Reading(found=False, background=background, color=None, shape=None, shape_iou=0.0,
                       position=None, objects=0)
    coarse = max(components, key=lambda mask: int(mask.sum()))
    object_rgb = _core_rgb(pixels, coarse)
    silhouette = _silhouette(smooth, background_rgb, object_rgb, coarse)
    box = _bounding_box(silhouette)
    shape, iou = _best_shape(silhouette, box)
    centre = (box.centre_x / width, box.centre_y / height)
    return Reading(found=True, background=background, color=_nearest_colour(object_rgb), shape=shape,
                   shape_iou=iou, position=_nearest_position(*centre), objects=len(components),
                   centre=centre, side=box.side / min(width, height))


def matches(reading: Reading, scene: Scene) -> dict[str, bool]:
    """Per attribute, whether the reading agrees with the scene: the scores are counted per attribute."""
    return {
        "color": reading.color == scene.color,
        "shape": reading.shape == scene.shape,
        "position": reading.position == scene.position,
        "background": reading.background == scene.background,
    }


def all_right(reading: Reading, scene: Scene) -> bool:
    """Whether all four attributes agree; `reading.objects` is left to the caller to check."""
    return all(matches(reading, scene).values())


def _analysis_pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    """The image as (H, W, 3) float32, downscaled when large: reading cost must not grow with size."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
        image = Image.fromarray(image, "RGB")
    image = image.convert("RGB")
    width, height = image.size
    short = min(width, height)
    if short > DOWNSCALE_ABOVE:
        scale = ANALYSIS_SHORT_SIDE / short
        # BOX averages every source pixel: no aliasing, and flat areas keep their colour exactly.
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BOX)
    return np.asarray(image, dtype=np.float32)  # (H, W, 3)


def _background_rgb(pixels: np.ndarray) -> np.ndarray:
    """Median colour of the border ring, (3,).

    An object near or on an edge covers too little of the ring to move its median, and an object
    covering most of the canvas (but not its border) cannot either, as a whole-image median would.
    """
    height, width = pixels.shape[:2]
    ring = max(2, round(RING_FRACTION * min(height, width)))
    edge = np.zeros((height, width), dtype=bool)  # (H, W)
    edge[:ring, :] = edge[-ring:, :] = True
    edge[:, :ring] = edge[:, -ring:] = True
    return np.median(pixels[edge], axis=0)  # (N, 3) -> (3,)


def _distance(pixels: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Euclidean RGB distance of every pixel from one colour, (H, W)."""
    return np.linalg.norm(pixels - rgb[None, None, :], axis=2)


def _far_threshold(background: str) -> float:
    """Half the distance from the background to its closest other palette colour.

    Any palette object is then at least twice this far, and smoothed noise stays well under it.
    """
    base = np.array(PALETTE[background], dtype=np.float32)
    others = _PALETTE_RGB[[name != background for name in _PALETTE_NAMES]]  # (colours - 1, 3)
    return float(np.linalg.norm(others - base[None, :], axis=1).min()) / 2


def _min_object_pixels(width: int, height: int) -> float:
    """The smallest component that counts as an object: a fraction of the expected area s^2."""
    return SPECK_FRACTION * (SIDE_FRACTION * min(width, height)) ** 2


def _objects(far: np.ndarray, min_pixels: float) -> list[np.ndarray]:
    """The connected components of `far` (8-connected) that are not specks, each an (H, W) bool mask."""
    labels, count = ndimage.label(far, structure=np.ones((3, 3), dtype=bool))  # (H, W) int
    sizes = np.bincount(labels.ravel(), minlength=count + 1)  # (count + 1,): label 0 is the rest
    return [labels == label for label in range(1, count + 1) if sizes[label] >= min_pixels]


def _core_rgb(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Median colour of the mask's eroded core, (3,): edge pixels are blends and would pull it off.

    A component too thin to survive erosion gives its colour from all its pixels instead.
    """
    core = ndimage.binary_erosion(mask, iterations=CORE_EROSION)  # (H, W) bool
    chosen = core if core.any() else mask
    return np.median(pixels[chosen], axis=0)  # (N, 3) -> (3,)


def _silhouette(smooth: np.ndarray, background_rgb: np.ndarray, object_rgb: np.ndarray,
                coarse: np.ndarray) -> np.ndarray:
    """The object cut halfway between its colour and the background's, (H, W) bool.

    A blurred edge crosses the halfway blend where the sharp edge was, so the box keeps its size
    whatever the blur; the fixed far-threshold would shrink or grow it with the colour contrast.
    Of the halfway cut, the component that overlaps the coarse object most is kept (holes filled).
    """
    direction = object_rgb - background_rgb  # (3,)
    contrast = float(direction @ direction)
    if contrast <= 0:
        return coarse
    blend = (smooth - background_rgb[None, None, :]) @ direction / contrast  # (H, W, 3) @ (3,) -> (H, W)
    labels, _ = ndimage.label(blend > 0.5, structure=np.ones((3, 3), dtype=bool))  # (H, W) int
    overlap = np.bincount(labels[coarse], minlength=labels.max() + 1)  # (labels + 1,)
    overlap[0] = 0
    if overlap.max() == 0:
        return coarse
    return ndimage.binary_fill_holes(labels == int(overlap.argmax()))


def _bounding_box(mask: np.ndarray) -> _Box:
    """The mask's box, extended past the canvas edge when the object is cut off there.

    Pixel j spans [j, j+1), so a box from pixel j0 to j1 spans [j0, j1 + 1). When the silhouette
    touches the edge on one axis only, its extent on that axis is cut short; the other axis still
    shows the whole side, so the box takes that side and reaches past the edge it touches.
    """
    height, width = mask.shape
    left, right = _extent(mask.any(axis=0))
    top, bottom = _extent(mask.any(axis=1))
    cut_x = left == 0 or right == width
    cut_y = top == 0 or bottom == height
    if cut_x and not cut_y and (left, right) != (0, width):
        side = max(bottom - top, right - left)
        centre_x = right - side / 2 if left == 0 else left + side / 2
        return _Box(centre_x=centre_x, centre_y=(top + bottom) / 2, side=side)
    if cut_y and not cut_x and (top, bottom) != (0, height):
        side = max(right - left, bottom - top)
        centre_y = bottom - side / 2 if top == 0 else top + side / 2
        return _Box(centre_x=(left + right) / 2, centre_y=centre_y, side=side)
    return _Box(centre_x=(left + right) / 2, centre_y=(top + bottom) / 2, side=((right - left) + (bottom - top)) / 2)


def _extent(occupied: np.ndarray) -> tuple[int, int]:
    """[first, last + 1) of the True entries of a 1-D bool array: the pixel span they cover."""
    indices = np.flatnonzero(occupied)
    return int(indices[0]), int(indices[-1]) + 1


def _best_shape(mask: np.ndarray, box: _Box) -> tuple[str, float]:
    """The shape whose ideal mask, fitted to the silhouette, has the highest IoU with it.

    Each shape is fitted twice and keeps its better IoU: to the bounding box (all three ideal shapes
    fill exactly an s-by-s box) and by moments (`_moment_fit`). The box fit is exact only to a pixel,
    and a pixel matters on a thin triangle apex; the moment fit is sub-pixel but leans on the area.
    """
    best_shape, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        iou = max(_fit_iou(shape, mask, box), _fit_iou(shape, mask, _moment_fit(shape, mask)))
        if iou > best_iou:
            best_shape, best_iou = shape, iou
    return best_shape, best_iou


def _moment_fit(shape: str, mask: np.ndarray) -> _Box:
    """The box the shape would have if it were the silhouette: side from the area, centre from the centroid.

    Area and centroid average over every pixel, so they are not tied to the pixel grid as the box is.
    """
    rows, cols = np.nonzero(mask)
    side = float(np.sqrt(rows.size / _AREA_PER_SIDE_SQUARED[shape]))
    centre_y = rows.mean() + 0.5 - _CENTROID_BELOW_CENTRE[shape] * side
    return _Box(centre_x=cols.mean() + 0.5, centre_y=centre_y, side=side)


def _fit_iou(shape: str, mask: np.ndarray, box: _Box) -> float:
    """IoU of the silhouette with the shape's ideal hard mask in that box."""
    height, width = mask.shape
    ideal = coverage(shape, box.centre_x, box.centre_y, box.side, width, height, supersample=1) > 0.5  # (H, W)
    return _iou(mask, ideal)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (H, W) bool masks (0.0 when both are empty)."""
    union = int(np.logical_or(a, b).sum())
    return int(np.logical_and(a, b).sum()) / union if union else 0.0


def _nearest_colour(rgb: np.ndarray) -> str:
    """The palette name closest to an RGB colour (Euclidean): tolerates a model's slightly-off colours."""
    distances = np.linalg.norm(_PALETTE_RGB - rgb[None, :], axis=1)  # (colours,)
    return _PALETTE_NAMES[int(distances.argmin())]


def _nearest_position(x: float, y: float) -> str:
    """The POSITIONS key nearest to a box centre given as fractions of width and height."""
    return min(POSITIONS, key=lambda name: (POSITIONS[name].x - x) ** 2 + (POSITIONS[name].y - y) ** 2)
