"""Is this file what it is given as? The checks a studio's model files pass before they are registered.

`linstudio models add` names a base model and the VAE, LoRAs, ControlNets and IP-Adapter that go
with it, and people hand over the wrong file often (a LoRA as the base, a VAE as a ControlNet, a
truncated download). The checks live here, beside the loaders that will later read the same
files (`loading`, `conditioning`), so that what is accepted is what loads; the command line only
turns a refusal into its one-line message, naming its own option.

Each check reads keys and shapes only (`checkpoints`): no tensor is loaded, and nothing here
imports torch except to read a `.ckpt`'s keys (a pickle, opened with weights_only). A check
raises CheckpointError naming the file and what it is instead; `check_base` returns what it read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from linfusion_engine.checkpoints import (
    CheckpointError,
    UnknownArchitectureError,
    describe_weights,
    folder_family,
    inspect_checkpoint,
    inspect_component,
    inspect_vae,
    read_shapes,
)
from linfusion_engine.loading import IP_ADAPTER_SUBFOLDER
from linfusion_engine.registry import is_single_file

# Key prefixes that mark a ControlNet / IP-Adapter weights file, whatever tool saved it.
CONTROLNET_MARKERS = ("control_model.", "controlnet_cond_embedding.", "input_hint_block.")
IP_ADAPTER_MARKERS = ("image_proj.", "ip_adapter.")


@dataclass(frozen=True)
class BaseModelCheck:
    """What `check_base` read from a base model: its family and, for a single file, its settings.

    Args:
        path: the file or folder read.
        family: sd15, sd21 or sdxl.
        evidence: what told the family (the file's keys, the folder's configs), as a clause;
            for a family taken as given, why the folder did not tell it.
        family_given: True when the folder's configs do not tell the family and the caller's was taken.
        prediction_type, native_size, has_vae: read from a single file; None for a folder (its
            own scheduler config and VAE are used as they are).
        assumptions: what a single file could not tell and was assumed (one sentence each).
    """

    path: Path
    family: str
    evidence: str
    family_given: bool = False
    prediction_type: str | None = None
    native_size: int | None = None
    has_vae: bool | None = None
    assumptions: tuple[str, ...] = ()


class FamilyMismatchError(CheckpointError):
    """The family given for a base model is not the one its file or folder shows."""

    def __init__(self, path: Path, given: str, detected: str, evidence: str) -> None:
        super().__init__(f"{path} is {detected} ({evidence}), not {given}")
        self.path, self.given, self.detected, self.evidence = path, given, detected, evidence


def check_base(path: str | Path, family: str | None = None) -> BaseModelCheck:
    """The family (and a single file's settings) of base model `path`, checked against `family` if given.

    A folder whose configs tell no Stable Diffusion family (a tiny model, a renamed pipeline) is
    taken as `family` when one is given; otherwise, and for any other wrong file, CheckpointError.
    A given family that the file or folder contradicts is FamilyMismatchError.
    """
    path = Path(path)
    if path.is_file() or is_single_file(str(path)):
        info = inspect_checkpoint(path)
        found = BaseModelCheck(path=path, family=info.family, evidence=info.evidence,
                               prediction_type=info.prediction_type, native_size=info.native_size,
                               has_vae=info.has_vae, assumptions=tuple(info.assumptions))
    else:
        try:
            detected, evidence = folder_family(path)
        except UnknownArchitectureError:
            if family is not None and path.is_dir():
                return BaseModelCheck(path=path, family=family, family_given=True,
                                      evidence="the folder's configs do not tell it")
            raise
        found = BaseModelCheck(path=path, family=detected, evidence=evidence)
    if family is not None and family != found.family:
        raise FamilyMismatchError(path, family, found.family, found.evidence)
    return found


def check_vae(path: Path) -> None:
    """A VAE: one file with decoder keys, or a folder with config.json (or vae/config.json)."""
    if path.is_file():
        inspect_vae(path)
    elif not ((path / "config.json").is_file() or (path / "vae" / "config.json").is_file()):
        raise CheckpointError(f"{path}: not a VAE folder (no config.json, nor vae/config.json)")


def check_controlnet(path: Path) -> None:
    """A ControlNet: one file with ControlNet keys, or a diffusers folder with config.json."""
    if path.is_file():
        inspect_component(path, CONTROLNET_MARKERS, "a ControlNet")
    elif not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a ControlNet folder (no config.json)")


def check_ip_adapter(path: Path) -> None:
    """An IP-Adapter: a weights file with image_encoder/ beside it, or a folder `ip_adapter_files` can read."""
    if path.is_file():
        inspect_component(path, IP_ADAPTER_MARKERS, "an IP-Adapter")
        if not (path.parent / "image_encoder").is_dir():
            raise CheckpointError(f"{path}: an IP-Adapter file needs its image encoder beside it "
                                  f"({path.parent / 'image_encoder'}/, as in the published models/ folder)")
        return
    try:
        ip_adapter_files(path)
    except FileNotFoundError as exc:
        raise CheckpointError(str(exc)) from None


def check_lora(path: Path) -> None:
    """A LoRA: one weights file whose keys are LoRA keys (any of the kohya / diffusers / peft spellings)."""
    _, shapes = read_shapes(path)
    what = describe_weights(shapes)
    if not what.startswith("this is a LoRA"):
        raise CheckpointError(f"{path}: not a LoRA: {what}")


def ip_adapter_files(folder: Path) -> tuple[str, str]:
    """(subfolder, weight file name) of an IP-Adapter folder: `models/` (or the root) with one safetensors/bin."""
    for subfolder in (IP_ADAPTER_SUBFOLDER, "sdxl_models", ""):
        candidates = sorted(p.name for p in (folder / subfolder).glob("ip-adapter*") if
                            p.suffix in (".safetensors", ".bin")) if (folder / subfolder).is_dir() else []
        if candidates:
            preferred = [c for c in candidates if c.endswith(".safetensors")] or candidates
            return subfolder, preferred[0]
    raise FileNotFoundError(f"{folder}: no ip-adapter*.safetensors (or .bin) in models/, sdxl_models/ or the "
                            "folder itself; an IP-Adapter folder holds models/<weights> and models/image_encoder/")
