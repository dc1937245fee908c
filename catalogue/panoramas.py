"""360° panoramas above 4096 px: the equirectangular render as six cube faces, in Pannellum's
multiresolution layout, so the viewer fetches only the tiles of the view and the level it needs.

Up to 4096 px wide, Pannellum shows the PNG itself as one WebGL texture. Beyond, one texture would
pass WebGL's size limit (often 4096 or 8192) and cost the whole image before the first frame, so
the render is reprojected onto a cube (face side about width / π, as many pixels per degree as
the render) and each face cut into a tile pyramid:

    {stem}_cube/{level}/{face}{row}_{col}.jpg     level 1 (coarsest: one tile) .. `levels`

with faces f, r, b, l, u, d (front, right, back, left, up, down; front looks at the image's centre
column). Level `l` has faces of `cube >> (levels - l)` pixels; the cube side is a multiple of
2 ** (levels - 1), so every level halves exactly. libvips reprojects (`mapim` over a coordinate
image computed lazily) and `dzsave` cuts each face, so memory stays at one face's strips.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CUBE_ABOVE_WIDTH = 4096  # wider equirectangular renders get cube faces; narrower open from the PNG
TILE = 512
FACES = "frblud"  # Pannellum's names and order: front, right, back, left, up, down


def needs_cube(width: int, projection: str | None) -> bool:
    return projection == "equirectangular" and width > CUBE_ABOVE_WIDTH


@dataclass(frozen=True)
class CubeLayout:
    """The cube's sizes, which Pannellum's `multiRes` settings name (`cubeResolution`, `maxLevel`)."""

    cube: int  # face side at the finest level, in pixels
    levels: int  # level 1 fits one tile; each next level doubles the face side
    tile: int = TILE

    @classmethod
    def of(cls, width: int, tile: int = TILE) -> CubeLayout:
        """The layout for an equirectangular render `width` pixels wide (360° of longitude)."""
        ideal = width / math.pi  # a face spans 90°: a quarter of the width over a tangent-plane stretch
        levels = 1 + max(0, math.ceil(math.log2(ideal / tile)))
        step = 2 ** (levels - 1)
        return cls(cube=step * max(1, round(ideal / step)), levels=levels, tile=tile)

    def face_side(self, level: int) -> int:
        return self.cube >> (self.levels - level)

    def tiles_per_side(self, level: int) -> int:
        return math.ceil(self.face_side(level) / self.tile)

    def expected_tiles(self) -> int:
        return len(FACES) * sum(self.tiles_per_side(level) ** 2 for level in range(1, self.levels + 1))

    def viewer_settings(self, base_path: str) -> dict:
        """Pannellum's `multiRes` block for tiles served under `base_path`."""
        return {"basePath": base_path, "path": "/%l/%s%y_%x", "extension": "jpg", "tileResolution": self.tile,
                "maxLevel": self.levels, "cubeResolution": self.cube}


def _direction(face: str, u, v):
    """The view ray (x right, y up, z ahead) through face coordinates u (right) and v (down), both
    in (-1, 1); works on libvips images and on plain numbers alike."""
    one = u * 0 + 1
    return {"f": (u, -v, one), "r": (one, -v, -u), "b": (-u, -v, -one),
            "l": (-one, -v, u), "u": (u, one, v), "d": (u, -one, -v)}[face]


def _signed(angle):
    """libvips' atan2 answers in [0, 360); the maps want [-180, 180)."""
    return (angle >= 180).ifthenelse(angle - 360, angle)


def face_index(face: str, side: int, width: int, height: int):
    """A 2-band float image (`side` square): for each face pixel, the equirectangular (x, y) it
    shows. Longitude 0 is the image's centre column, growing to the right; latitude 90° the top row."""
    import pyvips  # lazy: libvips loads only where panoramas are built

    xy = pyvips.Image.xyz(side, side)  # (side, side, 2): pixel column and row
    u = xy[0].cast("float").linear(2 / side, 1 / side - 1)  # pixel centres to (-1, 1)
    v = xy[1].cast("float").linear(2 / side, 1 / side - 1)
    x, y, z = _direction(face, u, v)
    longitude = _signed(x.math2(z, "atan2"))  # degrees: libvips' trigonometry is in degrees
    latitude = _signed(y.math2((x * x + z * z) ** 0.5, "atan2"))
    source_x = longitude.linear(width / 360, width / 2 - 0.5)
    source_y = latitude.linear(-height / 180, height / 2 - 0.5)
    return source_x.bandjoin(source_y)


def cut_faces(image, folder: Path, quality: int) -> Iterator[tuple[str, Path]]:
    """Reproject `image` (a random-access libvips image, equirectangular) and cut each face into
    `folder`; yields (key under the cube prefix, tile file) for every tile of every level."""
    import pyvips  # lazy: as above

    layout = CubeLayout.of(image.width)
    bilinear = pyvips.Interpolate.new("bilinear")
    for face in FACES:
        index = face_index(face, layout.cube, image.width, image.height)
        projected = image.mapim(index, interpolate=bilinear, extend="copy")
        out = folder / face
        projected.dzsave(str(out), tile_size=layout.tile, overlap=0, suffix=f".jpg[Q={quality}]", layout="dz")
        top = math.ceil(math.log2(layout.cube))  # dzsave's finest level number
        for level in range(1, layout.levels + 1):
            dz_level = top - (layout.levels - level)
            for path in sorted((folder / f"{face}_files" / str(dz_level)).glob("*.jpg")):
                col, row = path.stem.split("_")
                yield f"{level}/{face}{row}_{col}.jpg", path
