"""What an anonymous reader may see: the catalogue's records without the server's file paths.

Reads are open by default (LINSTUDIO_READ_REQUIRES_LOGIN off), so anyone who can reach the gallery
could read where manifests, control maps, the object store and export folders lie on the server.
Signed-in users (a token or a session) see the records whole; anonymous readers get them without
those paths: `manifest_name` (the file name) stays, `manifest_path` and input files' `path` go,
and a `file://` object URI, a folder destination or an export's written files go while `s3://`
ones stay (a bucket is not a server path).
"""

from __future__ import annotations

from typing import Any

ALWAYS_PRIVATE = frozenset({"manifest_path", "path"})  # a manifest's path, an input file's path
PRIVATE_UNLESS_S3 = frozenset({"destination", "object_uri", "thumb_uri", "written"})  # a URI, or a list of them


def for_viewer(value: Any, viewer: object | None) -> Any:
    """`value` as `viewer` may see it: whole for a signed-in viewer, without server paths for None."""
    return value if viewer is not None else _without_paths(value)


def _without_paths(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_paths(item) for key, item in value.items() if not _is_server_path(key, item)}
    if isinstance(value, list):
        return [_without_paths(item) for item in value]
    return value


def _is_server_path(key: str, value: Any) -> bool:
    if key in ALWAYS_PRIVATE:
        return True
    if key not in PRIVATE_UNLESS_S3:
        return False
    uris = value if isinstance(value, list) else [value]
    return any(isinstance(uri, str) and not uri.startswith("s3://") for uri in uris)
