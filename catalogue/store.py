"""Object stores: where render PNGs and thumbnails live, chosen by URL.

- `file:///abs/folder` — a local (or NAS-mounted) folder; the embedded default.
- `s3://bucket/prefix` — any S3 API through boto3. Endpoint, region and credentials come the
  standard AWS way (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, profiles, instance
  roles...), so a studio's existing AWS setup works unchanged and nothing here reads secrets.

Keys are always relative, `/`-separated paths (`renders/team/project/asset/abc.png`); a store maps
them under its root or prefix, and `uri(key)` gives the full address recorded in the catalogue.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from catalogue.errors import ObjectNotFoundError, StoreError

_TEMP_PREFIX = ".tmp-"
CHUNK_SIZE = 1 << 20


@runtime_checkable
class ObjectStore(Protocol):
    """What the catalogue needs from a store. Every method takes a relative key (see `check_key`)."""

    url: str

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write `data` at `key`, replacing what was there; readers see the old or new object, never half."""

    def get(self, key: str) -> bytes:
        """The bytes at `key`; ObjectNotFoundError when there are none."""

    def stream(self, key: str) -> Iterator[bytes]:
        """The bytes at `key` in chunks, so a 16K render can be hashed without holding it in memory."""

    def exists(self, key: str) -> bool:
        """Whether `key` holds an object."""

    def delete(self, key: str) -> None:
        """Remove `key`; deleting a missing key is not an error (sweeps and compensations repeat)."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key starting with `prefix`."""

    def uri(self, key: str) -> str:
        """The full address of `key` (file:///... or s3://...)."""

    def size(self, key: str) -> int:
        """The size in bytes of the object at `key`; ObjectNotFoundError when missing."""

    def modified(self, key: str) -> datetime:
        """When the object at `key` was last written (UTC), by the store's clock; ObjectNotFoundError when missing."""


def check_key(key: str) -> str:
    """Refuse keys that are absolute, empty, or climb out of the store (`..`), whatever the backend."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise StoreError(f"object key {key!r}: must be a non-empty relative path using '/'")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise StoreError(f"object key {key!r}: '.', '..' and empty path segments are not allowed")
    if parts[-1].startswith(_TEMP_PREFIX):
        raise StoreError(f"object key {key!r}: names starting with {_TEMP_PREFIX!r} are reserved for partial writes")
    return key


class FileStore:
    """Objects as files under a root folder; writes are atomic (temp file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):  # a symlink inside the store pointing out of it
            raise StoreError(f"object key {key!r}: resolves outside the store root {self.root}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=path.parent)
        except OSError as exc:
            if _disk_full(exc):
                raise self._full(key, data) from exc
            raise
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, path)
        except BaseException as exc:
            Path(temp_name).unlink(missing_ok=True)  # a full disk must not leave half an object behind
            if isinstance(exc, OSError) and _disk_full(exc):
                raise self._full(key, data) from exc
            raise
        _fsync_dir(path.parent)

    def _full(self, key: str, data: bytes) -> StoreError:
        """A full disk, said in words that name the store (the bare OSError names neither it nor the object).

        A StoreError, so the flow fails the job at once with this reason rather than retrying: space
        does not come back in seconds. What the ingest uploaded before is removed by its compensation.
        """
        return StoreError(f"no space left on device in the store at {self.root} (writing {key}, {len(data)} bytes); "
                          "free space or grow the disk, then run again")

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"{self.uri(key)}: no such object") from None

    def stream(self, key: str) -> Iterator[bytes]:
        try:
            handle = self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"{self.uri(key)}: no such object") from None
        with handle:
            while chunk := handle.read(CHUNK_SIZE):
                yield chunk

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def list(self, prefix: str = "") -> Iterator[str]:
        # Walk only the folder the prefix names (a pyramid's tiles), not the whole store.
        folder = prefix.rpartition("/")[0]
        start = self.root / folder if folder and ".." not in folder.split("/") else self.root
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(_TEMP_PREFIX):
                    continue
                key = (Path(dirpath) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key

    def uri(self, key: str) -> str:
        return (self.root / check_key(key)).as_uri()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{self.uri(key)}: no such object") from None

    def modified(self, key: str) -> datetime:
        try:
            return datetime.fromtimestamp(self._path(key).stat().st_mtime, timezone.utc)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{self.uri(key)}: no such object") from None


def _disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _fsync_dir(folder: Path) -> None:
    """Make a rename or unlink durable: the directory entry itself must reach the disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3Store:
    """Objects in an S3 bucket under a prefix. The bucket must already exist (checked at open)."""

    def __init__(self, bucket: str, prefix: str = "", client=None) -> None:
        if not bucket:
            raise StoreError("S3 store URL needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.client = client or make_s3_client()
        self._check_bucket()

    def _check_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            endpoint = self.client.meta.endpoint_url
            if status == 404:
                raise StoreError(
                    f"{self.url}: bucket {self.bucket!r} does not exist at {endpoint}; create it first "
                    "(the catalogue never creates buckets)"
                ) from None
            if status == 403:
                raise StoreError(
                    f"{self.url}: access to bucket {self.bucket!r} at {endpoint} denied; check the AWS credentials "
                    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
                ) from None
            raise

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise ObjectNotFoundError(f"{self.uri(key)}: no such object") from None

    def stream(self, key: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
        except self.client.exceptions.NoSuchKey:
            raise ObjectNotFoundError(f"{self.uri(key)}: no such object") from None
        with body:
            yield from body.iter_chunks(CHUNK_SIZE)

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
            for item in page.get("Contents", []):
                yield item["Key"][len(base) :]

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise ObjectNotFoundError(f"{self.uri(key)}: no such object")
        return int(head["ContentLength"])

    def modified(self, key: str) -> datetime:
        head = self._head(key)
        if head is None:
            raise ObjectNotFoundError(f"{self.uri(key)}: no such object")
        return head["LastModified"].astimezone(timezone.utc)


def make_s3_client():
    """A boto3 S3 client configured the standard AWS way, with retries, path-style off AWS.

    S3-compatible servers (SeaweedFS, MinIO, Ceph) are usually reached by IP or a plain host name
    where virtual-hosted bucket names do not resolve, so a client whose endpoint is not AWS's own
    uses path-style addressing.
    """
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    retries = {"max_attempts": 5, "mode": "standard"}
    client = session.client("s3", config=Config(retries=retries))
    host = urlparse(client.meta.endpoint_url).hostname or ""
    if not host.endswith(".amazonaws.com"):
        client = session.client("s3", config=Config(retries=retries, s3={"addressing_style": "path"}))
    return client


def open_store(url: str) -> ObjectStore:
    """The store for `url`: `file:///folder` or `s3://bucket/prefix`."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"store URL {url!r}: file URLs must be local (file:///folder), not host {parsed.netloc!r}")
        path = unquote(parsed.path)
        if not path:
            raise StoreError(f"store URL {url!r}: names no folder (expected file:///absolute/folder)")
        return FileStore(Path(path))
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, unquote(parsed.path))
    raise StoreError(f"store URL {url!r}: unsupported scheme {parsed.scheme!r} (use file:///folder or s3://bucket/prefix)")
