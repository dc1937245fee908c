"""Where a manifest may point: the path policy, the image check and the file hashes.

A manifest names control maps, reference images and paint-overs. It may name them
- relative to its own folder (a team's manifest travels with its inputs),
- by absolute path inside a shared folder the studio allow-lists (`LINSTUDIO_SHARED_ROOTS`, a NAS),
- or as `s3://bucket/key` (checked for shape only: validation never goes to the network).
Anything else is refused, so a manifest from one team cannot read another machine's files:
`..` that leaves the manifest's folder, absolute paths outside the shared roots, links that lead
out of both, and other URL schemes.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")
_S3_RE = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(.+)$")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_ROOTS_HINT = "use a path inside it or under a shared root (LINSTUDIO_SHARED_ROOTS)"


class PathRefused(ValueError):
    """A reference the policy refuses, or a file that is missing or not an image. str() is the message."""


def is_s3(reference: str) -> bool:
    return reference.startswith("s3://")


def resolve_reference(reference: str, manifest_dir: Path, shared_roots: Sequence[Path]) -> str:
    """The absolute path (or the s3:// URI) a manifest's reference points at, if the policy allows it.

    Raises PathRefused naming the rule broken. Does not check that the file exists.
    """
    if is_s3(reference):
        if not _S3_RE.match(reference):
            raise PathRefused(f"{reference!r} is not an S3 URI of the form s3://bucket/key")
        return reference
    if _URL_RE.match(reference):
        raise PathRefused(f"{reference!r}: only paths and s3:// URIs are allowed")
    folder = Path(os.path.abspath(manifest_dir))
    roots = [Path(os.path.abspath(Path(root).expanduser())) for root in shared_roots]
    written = Path(reference).expanduser()
    if written.is_absolute():
        target = Path(os.path.normpath(written))
        if not any(_inside(target, root) for root in roots):
            shown = ", ".join(map(str, roots)) if roots else "none set"
            raise PathRefused(f"{reference!r} is not under a shared root (LINSTUDIO_SHARED_ROOTS: {shown}); "
                              "use a path relative to the manifest's folder, or allow-list the folder")
    else:
        relative = os.path.normpath(reference)
        if relative == ".." or relative.startswith(".." + os.sep):
            raise PathRefused(f"{reference!r} leaves the manifest folder; {_ROOTS_HINT}")
        target = folder / relative
    # Links are followed: what is read must still lie inside the manifest's folder or a shared root.
    real = Path(os.path.realpath(target))
    allowed = [Path(os.path.realpath(folder))] + [Path(os.path.realpath(root)) for root in roots]
    if not any(_inside(real, place) for place in allowed):
        raise PathRefused(f"{reference!r} is a link that leads outside the manifest folder ({real}); {_ROOTS_HINT}")
    return str(target)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_image(location: str, reference: str) -> None:
    """Raise PathRefused unless `location` is an existing PNG, JPEG, WebP or TIFF file.

    Only the header and the chunk structure are read (`verify()` does not decode pixels), so a
    16K control map is checked in milliseconds. s3:// URIs are not checked: no network here.
    """
    if is_s3(location):
        return
    path = Path(location)
    if not path.exists():
        raise PathRefused(f"file not found: {reference}")
    if not path.is_file():
        raise PathRefused(f"not a file: {reference}")
    from PIL import Image  # deferred: only manifests with conditioning inputs pay for it

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=list(IMAGE_FORMATS)) as image:
                image.verify()
    except Image.DecompressionBombError:
        return  # a header big enough to trip Pillow's guard is still a readable image header
    except Exception:  # Pillow raises many kinds: all mean "not a readable image of those formats"
        raise PathRefused(f"not an image (PNG/JPEG/WebP/TIFF expected): {reference}") from None


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(location: str) -> tuple[str, str]:
    """(sha256, what was hashed) of a referenced file: its bytes, or for s3:// the URI itself.

    Remote objects are not fetched at planning time, so an s3:// input is identified by its URI:
    replacing the object behind the same URI does not change job keys (put a version in the key
    name). Local digests are cached by path, size and modification time for the process.
    """
    if is_s3(location):
        return hashlib.sha256(location.encode()).hexdigest(), "uri"
    stat = os.stat(location)
    cache_key = (location, stat.st_size, stat.st_mtime_ns)
    if cache_key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(location, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[cache_key] = digest.hexdigest()
    return _DIGESTS[cache_key], "bytes"
