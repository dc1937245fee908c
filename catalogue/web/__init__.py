"""The gallery artists browse: a FastAPI app of server-rendered pages and a JSON API over the catalogue.

`create_app(catalogue, settings)` builds it; `linstudio serve` runs it with uvicorn. Pages work
without JavaScript; everything a page does is also under `/api/` (OpenAPI at `/openapi.json`).
"""

from catalogue.web.app import create_app

__all__ = ["create_app"]
