"""Turn a job record's conditioning entries into the engine's inputs: files and s3:// objects -> PIL images.

The engine takes PIL images and knows nothing of paths or S3; the job record (`manifests.jobs`)
names every control map, reference image, init image and mask as `{path, sha256, hashed}`,
where `path` is a local file (hashed by its bytes at planning time) or an `s3://` URI (hashed by
its URI: it is fetched only here, at render time). This module is the only place those are read.

A local file whose bytes no longer match the hash taken when the job was planned is refused:
the job key says which input the render is of, and a render silently made from a different
paint-over would be catalogued under the wrong key. Re-run `linstudio run` to plan it again.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

from catalogue.store import make_s3_client
from linfusion_engine.conditioning.inputs import ControlInput, IpAdapterInput, LoraInput


class ConditioningInputError(ValueError):
    """A conditioning file is missing, unreadable, or changed since the job was planned."""


def _s3_bytes(uri: str) -> bytes:
    """The object at `s3://bucket/key`, through the same boto3 client setup as the object store."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    client = make_s3_client()
    from botocore.exceptions import ClientError

    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NoSuchBucket", "AccessDenied", "403"):
            raise ConditioningInputError(f"{uri}: cannot read the object ({code})") from exc
        raise  # anything else may be a blip: flows.transient decides whether to retry


def read_image(entry: dict, where: str):
    """The image a record's file entry names, decoded (PIL, loaded). `where` names it in errors."""
    from PIL import Image

    location = entry["path"]
    if location.startswith("s3://"):
        data = _s3_bytes(location)
    else:
        try:
            with open(location, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise ConditioningInputError(f"{where}: cannot read {location}: {exc.strerror}") from exc
        if entry.get("hashed") == "bytes" and hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise ConditioningInputError(
                f"{where}: {location} changed since the job was planned (its sha256 differs); "
                "run `linstudio run` again to plan the job with the new file")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # Pillow raises several types for a bad file
        raise ConditioningInputError(f"{where}: {location} is not a readable image: {exc}") from exc
    image.info[FILE_SHA256] = hashlib.sha256(data).hexdigest()
    return image


FILE_SHA256 = "linstudio_file_sha256"  # where read_image leaves the bytes' sha256 on the image


def _source(entry: dict, image) -> dict:
    """Where an input came from, for the render's metadata (the job record keeps the same).

    `file_sha256` is the sha256 of the bytes the render read. For a local file it equals the
    planned `sha256`; for an `s3://` input, whose URI is what planning hashed (`hashed: uri`), it is
    the only record of which object's contents the render used."""
    return {"path": entry["path"], "sha256": entry.get("sha256"), "hashed": entry.get("hashed"),
            "file_sha256": image.info.get(FILE_SHA256)}


def request_conditioning(conditioning: dict) -> dict[str, Any]:
    """RenderRequest keyword arguments for a job record's `conditioning` (empty dict for none)."""
    kwargs: dict[str, Any] = {}
    for i, control in enumerate(conditioning.get("controlnet") or []):
        image = read_image(control["image"], f"controlnet[{i}].image")
        kwargs.setdefault("controlnets", []).append(
            ControlInput(control["type"], image, float(control["scale"]), source=_source(control["image"], image)))
    ip = conditioning.get("ip_adapter")
    if ip:
        images = [read_image(entry, f"ip_adapter.images[{i}]") for i, entry in enumerate(ip["images"])]
        kwargs["ip_adapter"] = IpAdapterInput(images, float(ip["scale"]),
                                              sources=[_source(entry, image) for entry, image in zip(ip["images"], images)])
    init = conditioning.get("init_image")
    if init:
        kwargs["init_image"] = read_image(init["image"], "init_image.image")
        kwargs["strength"] = float(init["strength"])
        if init.get("mask"):
            kwargs["mask"] = read_image(init["mask"], "init_image.mask")
    loras = conditioning.get("lora") or []
    if loras:
        kwargs["loras"] = [LoraInput(lora["name"], float(lora["scale"])) for lora in loras]
    return kwargs
