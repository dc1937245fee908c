"""Looking at big renders: the deep-zoom pyramid, the 360° cube tiles, the PNG inline, and compare.

Every route takes a render id and reads its keys from the row (catalogue.tiles derives the
pyramid's keys from the PNG's), with the same read rule as the PNG itself (`reader`). Tiles and the
PNG of a render id never change (its PNG's hash is in their key), so they are cached like
thumbnails; the descriptor is not (a repair may rebuild the pyramid).
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from catalogue import panoramas, tiles
from catalogue.queries import projection_of
from catalogue.web import downloads, views
from catalogue.web.actions import NotFound
from catalogue.web.pages import page
from catalogue.web.security import Viewer, reader

router = APIRouter(include_in_schema=False)
Reader = Annotated[Viewer | None, Depends(reader)]
TILE_NAME = re.compile(r"(\d{1,5})_(\d{1,5})\.(jpg|png)")
CUBE_TILE_NAME = re.compile(r"[frblud]\d{1,5}_\d{1,5}\.jpg")


def _serve(request: Request, key: str, name: str, media_type: str, cache: bool = True):
    return downloads.object_response(request.app.state.catalogue.store, key, name, media_type,
                                     request.app.state.settings.s3_public_endpoint, attachment=False, cache=cache)


@router.get("/renders/{render_id}/image")
def image(request: Request, render_id: str, _who: Reader):
    """The PNG inline (the viewer's source for renders up to 2048 px)."""
    render = views.render_row(request.app.state.catalogue, render_id)
    return _serve(request, render["object_key"], f"{render_id}.png", "image/png")


@router.get("/renders/{render_id}/deepzoom.dzi")
def descriptor(request: Request, render_id: str, _who: Reader):
    """The DZI descriptor: 404 while the pyramid is being built (it is written last) or for a small render."""
    render = views.render_row(request.app.state.catalogue, render_id)
    if not tiles.needs_pyramid(render["width"], render["height"]):
        raise NotFound(f"render {render_id}: {render['width']}x{render['height']} has no deep-zoom pyramid "
                       f"(renders up to {tiles.DEEPZOOM_MIN_SIDE} px are shown from the PNG)")
    key = tiles.PyramidKeys.of(render["object_key"]).descriptor
    return _serve(request, key, f"{render_id}.dzi", "application/xml", cache=False)  # rebuilt by a repair


@router.get("/renders/{render_id}/deepzoom_files/{level}/{tile_name}")
def tile(request: Request, render_id: str, level: int, tile_name: str, _who: Reader):
    match = TILE_NAME.fullmatch(tile_name)
    if match is None or not 0 <= level <= 32:
        raise NotFound(f"tile {level}/{tile_name}: not a tile name")
    col, row, ext = int(match[1]), int(match[2]), match[3]
    render = views.render_row(request.app.state.catalogue, render_id)
    key = tiles.tile_key(render["object_key"], level, col, row, ext)
    return _serve(request, key, tile_name, tiles.CONTENT_TYPES[ext])


@router.get("/renders/{render_id}/cube/{level}/{tile_name}")
def cube_tile(request: Request, render_id: str, level: int, tile_name: str, _who: Reader):
    """One tile of an equirectangular render's cube faces (catalogue.panoramas), for the 360° viewer."""
    match = CUBE_TILE_NAME.fullmatch(tile_name)
    if match is None or not 1 <= level <= 16:
        raise NotFound(f"cube tile {level}/{tile_name}: not a tile name")
    render = views.render_row(request.app.state.catalogue, render_id)
    if not panoramas.needs_cube(render["width"], projection_of(render.get("record"))):
        raise NotFound(f"render {render_id}: no cube faces (only equirectangular renders above "
                       f"{panoramas.CUBE_ABOVE_WIDTH} px wide have them)")
    key = tiles.PyramidKeys.of(render["object_key"]).cube_prefix + f"{level}/{tile_name}"
    return _serve(request, key, tile_name, "image/jpeg")


@router.get("/compare", response_class=HTMLResponse)
def compare(request: Request, who: Reader, left: str, right: str):
    """Two renders side by side, zoom and pan kept in step: `/compare?left=ID&right=ID` is shareable."""
    catalogue = request.app.state.catalogue
    pair = [views.render_row(catalogue, left), views.render_row(catalogue, right)]
    return page(request, "compare.html", who, pair=pair, sources=[views.viewer_source(r, catalogue.store) for r in pair])
