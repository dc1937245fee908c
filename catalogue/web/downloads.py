"""Serving render objects: only keys the catalogue holds a row for, streamed or presigned.

The route takes a render id, never a key or path: the key comes from the render's row, so a
request can only ever reach catalogued objects (and the store's own `check_key` refuses `..` on
top). A local store streams the bytes through the gallery; an S3 store answers with a short-lived
presigned URL, signed for LINSTUDIO_S3_PUBLIC_ENDPOINT when the internal endpoint is not one
artists' machines can reach.
"""

from __future__ import annotations

from fastapi.responses import RedirectResponse, StreamingResponse

from catalogue.store import FileStore, S3Store

PRESIGN_SECONDS = 900


def object_response(store, key: str, filename: str, media_type: str, public_endpoint: str | None,
                    attachment: bool = True, cache: bool = False):
    """A response delivering `key`: a stream for a folder store, a redirect to a presigned URL for S3."""
    disposition = f'{"attachment" if attachment else "inline"}; filename="{filename}"'
    if isinstance(store, S3Store):
        return RedirectResponse(presigned_url(store, key, public_endpoint), status_code=307)
    if not isinstance(store, FileStore):  # pragma: no cover - only two stores exist
        raise TypeError(f"no download support for {type(store).__name__}")
    chunks = store.stream(key)
    first = next(chunks)  # raises ObjectNotFoundError now, while a 404 can still be sent
    headers = {"Content-Disposition": disposition, "X-Content-Type-Options": "nosniff"}
    if cache:  # thumbnails of a render id never change; private: reading may need a sign-in
        headers["Cache-Control"] = "private, max-age=31536000, immutable"

    def body():
        yield first
        yield from chunks

    return StreamingResponse(body(), media_type=media_type, headers=headers)


def presigned_url(store: S3Store, key: str, public_endpoint: str | None) -> str:
    """A GET URL for `key` valid PRESIGN_SECONDS, for the public endpoint when one is set (signing is local)."""
    client = store.client
    if public_endpoint:
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client("s3", endpoint_url=public_endpoint,
                                                config=Config(s3={"addressing_style": "path"}))
    # No response-content-disposition override (which would name the download): SeaweedFS 4.48 then
    # rejects the signature, and the S3 API a studio runs must work. The file keeps its key's name.
    params = {"Bucket": store.bucket, "Key": store._full(key)}
    return client.generate_presigned_url("get_object", Params=params, ExpiresIn=PRESIGN_SECONDS)
