"""Deep-zoom tile pyramids of big renders, in the object store beside the PNG.

A 16K render is a ~300 MB PNG no browser shows usefully; the gallery shows it through
OpenSeadragon from a Deep Zoom (DZI) pyramid instead: `deepzoom/{stem}.dzi` (the XML descriptor)
and `deepzoom/{stem}_files/{level}/{col}_{row}.jpg`, where `renders/{stem}.png` is the render's
object key. The keys follow from the object key alone, so no column records them and a deleted
row leaves tiles that `catalogue check` can recognise as orphans.

The descriptor is written last and deleted first: tiles without a descriptor are a pyramid
being built or one whose build was interrupted ("partial"), and a descriptor with fewer tiles than
its dimensions call for is partial too. Only renders larger than `DEEPZOOM_MIN_SIDE` on a side get
one; smaller renders open in the same viewer from the PNG directly.

libvips' dzsave builds the pyramid from a sequentially decoded PNG in a few hundred MB whatever
the render's size (bench/deepzoom_bench.py measures it); Pillow would hold the whole 16K image.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from catalogue import panoramas
from catalogue.errors import ObjectNotFoundError
from catalogue.store import ObjectStore

log = logging.getLogger(__name__)

DEEPZOOM_MIN_SIDE = 2048  # larger than this on a side: a pyramid; up to it, the PNG itself
# 510 + 2 x 1 overlap = 512-pixel tiles, four times OpenSeadragon's default area: the first screen
# of a 16K render is ~15 requests instead of ~60 (bench/deepzoom_bench.py, docs/gallery.md). Old
# pyramids keep the size their descriptor names: `state` reads it from there.
TILE_SIZE = 510
OVERLAP = 1
JPEG_QUALITY = 85
ROOT = "deepzoom/"
UPLOAD_THREADS = 8
CONTENT_TYPES = {"dzi": "application/xml", "jpg": "image/jpeg", "png": "image/png"}

State = Literal["complete", "partial", "missing", "not_needed"]


@dataclass(frozen=True)
class PyramidKeys:
    """Where a render's pyramid lies in the store, from its PNG's object key."""

    stem: str  # deepzoom/team/project/asset/jobkey-sha

    @classmethod
    def of(cls, object_key: str) -> PyramidKeys:
        name = object_key.removeprefix("renders/").removesuffix(".png")
        return cls(f"{ROOT}{name}")

    @property
    def descriptor(self) -> str:
        return f"{self.stem}.dzi"

    @property
    def tiles_prefix(self) -> str:
        return f"{self.stem}_files/"

    @property
    def panorama(self) -> str:
        """The 4096-px JPEG that panoramas had before cube faces (kept only to be deleted)."""
        return f"{self.stem}.pano.jpg"

    @property
    def cube_prefix(self) -> str:
        """Pannellum's multiresolution cube faces: `{level}/{face}{row}_{col}.jpg` under it."""
        return f"{self.stem}_cube/"

    def tile(self, level: int, col: int, row: int, ext: str) -> str:
        return f"{self.tiles_prefix}{level}/{col}_{row}.{ext}"


def needs_pyramid(width: int, height: int) -> bool:
    return max(width, height) > DEEPZOOM_MIN_SIDE


def expected_tiles(width: int, height: int, tile_size: int = TILE_SIZE) -> int:
    """How many tiles a complete DZI pyramid of width x height has (every level down to 1x1)."""
    top = math.ceil(math.log2(max(width, height)))
    total = 0
    for level in range(top + 1):
        scale = 2 ** (top - level)
        w, h = math.ceil(width / scale), math.ceil(height / scale)
        total += math.ceil(w / tile_size) * math.ceil(h / tile_size)
    return total


DZI_NAMESPACE = "http://schemas.microsoft.com/deepzoom/2008"


@dataclass(frozen=True)
class Descriptor:
    """What a DZI descriptor says: the pyramid's tile format, tile size, overlap and full size."""

    ext: str
    tile_size: int
    overlap: int
    width: int
    height: int

    def xml(self) -> str:
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<Image xmlns="{DZI_NAMESPACE}" Format="{self.ext}" Overlap="{self.overlap}" '
                f'TileSize="{self.tile_size}"><Size Height="{self.height}" Width="{self.width}"/></Image>\n')

    @classmethod
    def parse(cls, text: str) -> Descriptor:
        """Read one back (only ours: attribute order free, no namespaces beyond DZI's)."""
        fields = dict(re.findall(r'(Format|Overlap|TileSize|Width|Height)="([^"]*)"', text))
        try:
            return cls(fields["Format"], int(fields["TileSize"]), int(fields["Overlap"]),
                       int(fields["Width"]), int(fields["Height"]))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"not a DZI descriptor: {text[:120]!r}") from exc

    def tile_source(self, tiles_url: str) -> dict:
        """OpenSeadragon's inline form of a DZI descriptor: the page carries it, which saves the
        viewer a round trip before its first tile."""
        return {"Image": {"xmlns": DZI_NAMESPACE, "Url": tiles_url, "Format": self.ext,
                          "Overlap": str(self.overlap), "TileSize": str(self.tile_size),
                          "Size": {"Width": str(self.width), "Height": str(self.height)}},
                # Tiles are cached as immutable: the tile size in their URLs keeps a browser from
                # mixing tiles cached from a pyramid rebuilt at another size.
                "queryParams": f"?tile={self.tile_size}"}


def descriptor_xml(width: int, height: int, ext: str) -> str:
    return Descriptor(ext, TILE_SIZE, OVERLAP, width, height).xml()


def read_descriptor(store: ObjectStore, object_key: str) -> Descriptor | None:
    """The render's descriptor, or None while its pyramid is missing or being (re)built, or when the
    descriptor cannot be read (then the pyramid counts as partial, and a repair rebuilds it)."""
    try:
        return Descriptor.parse(store.get(PyramidKeys.of(object_key).descriptor).decode("utf-8", "replace"))
    except (ObjectNotFoundError, ValueError):
        return None


@dataclass(frozen=True)
class Found:
    """What `inspect` found of a render's pyramid: its state, and whether the flat pyramid is whole
    (a partial panorama with a whole flat pyramid needs only its cube: `build_cube`)."""

    state: State
    flat_whole: bool

    @property
    def only_cube_missing(self) -> bool:
        """A pyramid built before cube faces existed: `build_cube` alone mends it, and the flat tiles,
        which browsers may hold in their cache, stay as they are."""
        return self.state == "partial" and self.flat_whole


def inspect(store: ObjectStore, object_key: str, width: int, height: int, projection: str | None = None) -> Found:
    """Whether the render's pyramid (and, for a panorama above 4096 px, its cube faces) is complete,
    partial (interrupted, or being built) or missing. The tile size is the descriptor's own, so a
    pyramid built before TILE_SIZE changed still reads as complete."""
    if not needs_pyramid(width, height):
        return Found("not_needed", False)
    keys = PyramidKeys.of(object_key)
    tiles = sum(1 for _ in store.list(keys.tiles_prefix))
    descriptor = read_descriptor(store, object_key)
    if descriptor is None:
        return Found("partial" if tiles else "missing", False)
    if tiles < expected_tiles(width, height, descriptor.tile_size):
        return Found("partial", False)
    if panoramas.needs_cube(width, projection):
        faces = sum(1 for _ in store.list(keys.cube_prefix))
        if faces < panoramas.CubeLayout.of(width).expected_tiles():
            return Found("partial", True)
    return Found("complete", True)


def state(store: ObjectStore, object_key: str, width: int, height: int, projection: str | None = None) -> State:
    """`inspect`'s state alone."""
    return inspect(store, object_key, width, height, projection).state


def build(store: ObjectStore, object_key: str, projection: str | None = None) -> int:
    """Build (or rebuild) the pyramid of the PNG at `object_key`; returns the number of tiles written.

    The PNG is copied to a temporary file and decoded sequentially by libvips; tiles are uploaded
    by a few threads (an S3 store answers each put in milliseconds), the descriptor last.
    """
    import pyvips  # lazy: libvips (a native library, ~0.05 s here) loads only where pyramids are built

    keys = PyramidKeys.of(object_key)
    store.delete(keys.descriptor)  # from here on, the pyramid reads as partial until it is whole again
    with tempfile.TemporaryDirectory(prefix="linstudio-dz-") as folder:
        source = Path(folder) / "render.png"
        with source.open("wb") as handle:
            for chunk in store.stream(object_key):
                handle.write(chunk)
        image = pyvips.Image.new_from_file(str(source), access="sequential")  # dzsave reads it once, top down
        ext = "png" if image.hasalpha() else "jpg"
        suffix = ".png" if ext == "png" else f".jpg[Q={JPEG_QUALITY}]"
        out = Path(folder) / "p"
        image.dzsave(str(out), tile_size=TILE_SIZE, overlap=OVERLAP, suffix=suffix, layout="dz")
        width, height = image.width, image.height
        tiles = sorted((out.parent / "p_files").rglob(f"*.{ext}"))
        stale = set(store.list(keys.tiles_prefix))

        def put(path: Path) -> str:
            key = keys.tiles_prefix + path.relative_to(out.parent / "p_files").as_posix()
            store.put(key, path.read_bytes(), CONTENT_TYPES[ext])
            return key

        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            written = set(pool.map(put, tiles))
        for key in stale - written:
            store.delete(key)
        if panoramas.needs_cube(width, projection):
            _put_cube(store, keys, source, Path(folder) / "cube")
        store.delete(keys.panorama)  # a 4096-px JPEG from before cube faces
    store.put(keys.descriptor, descriptor_xml(width, height, ext).encode(), CONTENT_TYPES["dzi"])
    return len(written)


def build_cube(store: ObjectStore, object_key: str) -> int:
    """(Re)build only the cube faces of the equirectangular PNG at `object_key` (`build` does it with
    the pyramid; the bench times the two apart); returns the number of face tiles written."""
    with tempfile.TemporaryDirectory(prefix="linstudio-cube-") as folder:
        source = Path(folder) / "render.png"
        with source.open("wb") as handle:
            for chunk in store.stream(object_key):
                handle.write(chunk)
        return _put_cube(store, PyramidKeys.of(object_key), source, Path(folder) / "cube")


def _put_cube(store: ObjectStore, keys: PyramidKeys, source: Path, folder: Path) -> int:
    """Cut the panorama's cube faces (catalogue.panoramas), upload them and drop stale ones."""
    import pyvips  # lazy: as in build

    folder.mkdir()
    image = pyvips.Image.new_from_file(str(source))  # random access: a face reads rows from all over
    stale = set(store.list(keys.cube_prefix))

    def put(item: tuple[str, Path]) -> str:
        name, path = item
        store.put(keys.cube_prefix + name, path.read_bytes(), CONTENT_TYPES["jpg"])
        return keys.cube_prefix + name

    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        written = set(pool.map(put, panoramas.cut_faces(image, folder, JPEG_QUALITY)))
    for key in stale - written:
        store.delete(key)
    return len(written)


def delete(store: ObjectStore, object_key: str) -> int:
    """Remove a render's pyramid, descriptor first (what is left reads as partial, then as nothing)."""
    keys = PyramidKeys.of(object_key)
    store.delete(keys.descriptor)
    removed = 0
    for key in [*store.list(keys.tiles_prefix), *store.list(keys.cube_prefix)]:
        if stem_of(key) != keys.stem:  # only this pyramid's own tiles, whatever else shares the prefix
            continue
        store.delete(key)
        removed += 1
    store.delete(keys.panorama)
    return removed


TILE_KEY = re.compile(r"(?P<stem>.+)_(?:files/\d+/\d+_\d+\.(?:jpg|png)|cube/\d+/[frblud]\d+_\d+\.jpg)")


def stem_of(key: str) -> str | None:
    """The pyramid stem a key under ROOT belongs to, read from the key's whole shape (a project or
    asset named `ice_cube` or `x_files` must not cut a stem short); None for a key of no pyramid."""
    if key.endswith(".pano.jpg"):
        return key.removesuffix(".pano.jpg")
    if key.endswith(".dzi"):
        return key.removesuffix(".dzi")
    match = TILE_KEY.fullmatch(key)
    return match["stem"] if match else None


def pyramid_stems(store: ObjectStore) -> Iterator[str]:
    """Every pyramid stem present in the store (from descriptors and tile folders alike), once each."""
    seen: set[str] = set()
    for key in store.list(ROOT):
        stem = stem_of(key)
        if stem is not None and stem not in seen:
            seen.add(stem)
            yield stem


def delete_stem(store: ObjectStore, stem: str) -> int:
    """Remove everything of the pyramid at `stem` (an orphan: its render row is gone)."""
    return delete(store, f"renders/{stem.removeprefix(ROOT)}.png")


def tile_key(object_key: str, level: int, col: int, row: int, ext: str) -> str | None:
    """The store key of one tile, or None when `ext` is not a tile format (the route's own guard)."""
    if ext not in ("jpg", "png"):
        return None
    return PyramidKeys.of(object_key).tile(level, col, row, ext)


def wanted(renders: Iterable[tuple[str, str, int, int]]) -> list[tuple[str, str, int, int]]:
    """The (render id, object key, width, height) rows large enough for a pyramid."""
    return [row for row in renders if needs_pyramid(row[2], row[3])]
