"""The analyzer reads the generator's own drawings perfectly, and degraded ones nearly so.

The analyzer is the yardstick for a trained model's pixels, so it is held to the ground truth first
(every attribute of every drawn scene, square and non-square canvases, jittered scenes), then to
ground truth degraded the way a small model degrades it (blur, noise, off colours, stray blobs),
then to hand-made scenes whose readings are asserted one by one. Seeds are fixed throughout.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from toy.analyzer import Reading, all_right, analyze, matches
from toy.shapes import COLORS, PALETTE, POSITIONS, SHAPES, Scene, coverage, draw, scene_from_seed


def _misreadings(scenes: list[Scene], images: list[np.ndarray | Image.Image]) -> list[tuple[Scene, Reading]]:
    """The (scene, reading) pairs where an attribute is wrong or the object count is not 1."""
    readings = [analyze(image) for image in images]
    return [(scene, reading) for scene, reading in zip(scenes, readings)
            if not (all_right(reading, scene) and reading.found and reading.objects == 1)]


def _degrade(image: Image.Image, seed: int, *, blur: float, noise: float) -> np.ndarray:
    """Gaussian blur, then Gaussian noise: (H, W, 3) uint8. Blur sigma is in px at a short side of 128."""
    pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3)
    sigma = blur * min(pixels.shape[:2]) / 128
    blurred = ndimage.gaussian_filter(pixels, sigma=(sigma, sigma, 0))  # (H, W, 3)
    noisy = blurred + np.random.default_rng(seed).normal(0.0, noise, size=pixels.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def _paint(pixels: np.ndarray, scene: Scene) -> np.ndarray:
    """`pixels` (H, W, 3) with the scene's object blended on top, as `draw` blends it: a second object."""
    height, width = pixels.shape[:2]
    alpha = coverage(scene.shape, *scene.box(width, height), width, height)[..., None]  # (H, W, 1)
    painted = alpha * np.array(PALETTE[scene.color], dtype=np.float32) + (1 - alpha) * pixels  # (H, W, 3)
    return np.round(painted).astype(np.uint8)


@pytest.mark.parametrize(("width", "height", "seeds", "jitter"), [
    (128, 128, range(300), False),
    (256, 128, range(300, 360), False),
    (96, 160, range(400, 460), False),
    (128, 128, range(500, 650), True),
    (256, 128, range(700, 740), True),
    (96, 160, range(800, 840), True),
    (64, 64, range(900, 940), False),
])
def test_ground_truth_reads_right(width: int, height: int, seeds: range, jitter: bool) -> None:
    """Every drawn scene is read right in all four attributes, as exactly one object."""
    scenes = [scene_from_seed(seed, jitter=jitter) for seed in seeds]
    assert _misreadings(scenes, [draw(scene, width, height) for scene in scenes]) == []


def test_ground_truth_shape_fit_is_tight() -> None:
    """On exact drawings the chosen ideal shape overlaps the silhouette almost perfectly."""
    readings = [analyze(draw(scene_from_seed(seed), 128, 128)) for seed in range(60)]
    assert min(reading.shape_iou for reading in readings) > 0.97


def test_large_canvas_is_read_after_downscaling() -> None:
    """A 2048x2048 image (upscaled from a drawing, soft edges and all) reads like the small one."""
    scenes = [scene_from_seed(seed) for seed in (3, 4, 5, 6)]
    images = [draw(scene, 256, 256).resize((2048, 2048), Image.BICUBIC) for scene in scenes]
    assert _misreadings(scenes, images) == []


@pytest.mark.parametrize(("width", "height", "jitter"), [(128, 128, False), (128, 128, True), (256, 128, True)])
def test_blurred_noisy_ground_truth_scores_at_least_98_percent(width: int, height: int, jitter: bool) -> None:
    """Blur sigma 1.5 px (at 128) plus noise std 12: what a small model's soft, grainy output looks like."""
    seeds = range(1000, 1200 if width == 128 else 1080)
    scenes = [scene_from_seed(seed, jitter=jitter) for seed in seeds]
    images = [_degrade(draw(scene, width, height), seed, blur=1.5, noise=12.0) for seed, scene in zip(seeds, scenes)]
    wrong = _misreadings(scenes, images)
    assert 1 - len(wrong) / len(scenes) >= 0.98, wrong[:5]


def test_heavy_noise_makes_no_specks() -> None:
    """Noise std 25 with no blur: single noisy pixels must neither count as objects nor bend the silhouette."""
    seeds = range(1500, 1600)
    scenes = [scene_from_seed(seed, jitter=True) for seed in seeds]
    images = [_degrade(draw(scene, 128, 128), seed, blur=0.0, noise=25.0) for seed, scene in zip(seeds, scenes)]
    wrong = _misreadings(scenes, images)
    assert 1 - len(wrong) / len(scenes) >= 0.98, wrong[:5]


def test_off_colours_read_as_nearest_palette_colour() -> None:
    """A whole image shifted by up to 20 per channel (a model's colour drift) still names its colours."""
    rng = np.random.default_rng(7)
    scenes = [scene_from_seed(seed, jitter=True) for seed in range(2000, 2150)]
    images = []
    for scene in scenes:
        shifted = np.asarray(draw(scene, 128, 128), dtype=np.float32) + rng.uniform(-20, 20, size=3)  # (H, W, 3)
        images.append(np.clip(shifted, 0, 255).astype(np.uint8))
    wrong = _misreadings(scenes, images)
    assert 1 - len(wrong) / len(scenes) >= 0.98, wrong[:5]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("position", tuple(POSITIONS))
def test_hand_made_scene_reads_exactly(shape: str, position: str) -> None:
    """Each shape at each anchor, on colours chosen per case, is read attribute by attribute.

    The colour pairs include the palette's closest ones (yellow on orange, red on orange, blue on
    purple), where a sloppy threshold would lose the object's edge.
    """
    pairs = (("yellow", "orange"), ("red", "orange"), ("blue", "purple"), ("white", "black"), ("green", "white"))
    index = SHAPES.index(shape) * len(POSITIONS) + tuple(POSITIONS).index(position)
    color, background = pairs[index % len(pairs)]
    reading = analyze(draw(Scene(color, shape, position, background), 128, 128))
    assert (reading.found, reading.objects) == (True, 1)
    assert (reading.color, reading.shape, reading.position, reading.background) == (color, shape, position, background)
    assert reading.shape_iou > 0.97
    assert reading.side == pytest.approx(0.35, abs=0.02)
    anchor = POSITIONS[position]
    assert reading.centre == pytest.approx((anchor.x, anchor.y), abs=0.01)


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_survives_heavy_blur(shape: str) -> None:
    """Blur sigma 3 px rounds a square's corners and a triangle's apex, yet each stays itself."""
    scene = Scene("purple", shape, "center", "green")
    reading = analyze(_degrade(draw(scene, 128, 128), 11, blur=3.0, noise=0.0))
    assert reading.shape == shape


def test_two_objects_count_two() -> None:
    """Two separate objects on one canvas are counted; the larger one is the one described."""
    first = Scene("red", "square", "left", "white")
    second = Scene("blue", "circle", "right", "white", side=0.25)
    reading = analyze(_paint(np.asarray(draw(first, 128, 128)), second))
    assert reading.objects == 2
    assert (reading.color, reading.shape, reading.position) == ("red", "square", "left")


def test_stray_blob_counts_but_speck_does_not() -> None:
    """An 8x8 blob (3% of the object's area) is an object; a 2x2 speck is noise."""
    scene = Scene("green", "triangle", "top", "black")
    blob = np.asarray(draw(scene, 128, 128)).copy()
    blob[110:118, 110:118] = PALETTE["yellow"]
    speck = np.asarray(draw(scene, 128, 128)).copy()
    speck[110:112, 110:112] = PALETTE["yellow"]
    assert analyze(blob).objects == 2
    assert analyze(speck).objects == 1
    assert all_right(analyze(blob), scene)


@pytest.mark.parametrize("color", COLORS)
def test_flat_image_finds_nothing(color: str) -> None:
    """A flat image has a background and no object."""
    reading = analyze(np.full((96, 128, 3), PALETTE[color], dtype=np.uint8))
    assert reading == Reading(found=False, background=color, color=None, shape=None, shape_iou=0.0,
                              position=None, objects=0)


@pytest.mark.parametrize(("shape", "position", "dx", "dy", "side"), [
    ("square", "left", -0.2, 0.0, 0.35),  # half cut off at the left edge
    ("circle", "top", 0.0, -0.2, 0.35),  # half cut off at the top
    ("triangle", "right", 0.22, 0.2, 0.5),  # big, cut off at the right
    ("square", "center", 0.0, 0.0, 0.7),  # covers half the canvas
])
def test_object_on_the_edge_does_not_fool_the_background(shape: str, position: str, dx: float, dy: float,
                                                         side: float) -> None:
    """An object touching or crossing an edge leaves the background read right, and the shape too."""
    scene = Scene("white", shape, position, "yellow", side=side, dx=dx, dy=dy)
    reading = analyze(draw(scene, 128, 128))
    assert (reading.background, reading.color, reading.shape, reading.position) == ("yellow", "white", shape, position)


@pytest.mark.parametrize("scene", [
    Scene("red", "square", "top", "green", dx=-0.38, dy=-0.16),  # covers the top-left corner pixel
    Scene("black", "circle", "center", "white", side=0.9),  # covers most of the canvas, but not its border
])
def test_background_is_the_border_not_a_corner_nor_the_majority(scene: Scene) -> None:
    """The background is the border ring's colour: one corner pixel or the bulk of the canvas may be the object."""
    reading = analyze(draw(scene, 128, 128))
    assert (reading.background, reading.color) == (scene.background, scene.color)


def test_matches_flags_exactly_the_wrong_attribute() -> None:
    """Each attribute is compared on its own: changing one scene attribute flips exactly that key."""
    scene = Scene("orange", "triangle", "bottom", "blue")
    reading = analyze(draw(scene, 128, 128))
    assert matches(reading, scene) == {"color": True, "shape": True, "position": True, "background": True}
    assert all_right(reading, scene)
    for key, other in (("color", "red"), ("shape", "square"), ("position", "top"), ("background", "black")):
        wrong_scene = dataclasses.replace(scene, **{key: other})
        result = matches(reading, wrong_scene)
        assert [name for name, right in result.items() if not right] == [key]
        assert not all_right(reading, wrong_scene)


def test_accepts_pil_modes_and_rejects_non_rgb_arrays() -> None:
    """PIL images in any mode are converted; an array that is not (H, W, 3) uint8 is refused, not guessed at."""
    scene = Scene("black", "circle", "bottom", "white")
    image = draw(scene, 128, 128)
    assert all_right(analyze(image.convert("RGBA")), scene)
    assert analyze(image) == analyze(np.asarray(image))
    with pytest.raises(ValueError):
        analyze(np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(ValueError):
        analyze(np.asarray(image, dtype=np.float32) / 255)  # (H, W, 3) in [0, 1]: not guessed at


def test_reading_is_frozen() -> None:
    """Readings are values: nothing downstream can edit one after the fact."""
    reading = analyze(draw(Scene("red", "circle", "center", "blue"), 64, 64))
    with pytest.raises(dataclasses.FrozenInstanceError):
        reading.shape = "square"  # type: ignore[misc]
