"""LinFusion Studio: manifests in, catalogued renders out.

The `linstudio` package is the command line, on top of the parts. The one settings object and the
version live on the ground floor, in `linstudio_settings`; the parts themselves live in
`linfusion_engine` (model maths), `manifests` (the format teams write), `catalogue` (what exists)
and `flows` (orchestration).
"""

from linstudio_settings import __version__

__all__ = ["__version__"]
