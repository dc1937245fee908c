"""Checkpoints of a distillation run: the LinFusion layers (fp32), the optimizer, the step.

A checkpoint is a folder `step-00000200/` holding the layers in the published format (so
`linstudio distill-eval` and `LinFusion.from_pretrained` can read any checkpoint), `optimizer.pt`
and `state.json`. It is written into a hidden temp folder and renamed into place, so an
interrupted write never leaves a checkpoint that looks complete; `state.json` is the marker.

Checkpoints live next to the output folder (`OUT-checkpoints/` by default), not inside it: the
model registry identifies a LinFusion folder by hashing every weight file in it, and checkpoints
inside the folder would make that identity change whenever one is added or pruned (re-rendering
every job of the model).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from linfusion_engine.linfusion import LinFusion

STATE_NAME = "state.json"
OPTIMIZER_NAME = "optimizer.pt"
_PREFIX = "step-"


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    step: int
    state: dict


def default_checkpoint_dir(out: Path) -> Path:
    return out.parent / f"{out.name}-checkpoints"


def list_checkpoints(folder: Path) -> list[Checkpoint]:
    """Complete checkpoints under `folder`, oldest first (half-written ones have no state.json)."""
    found = []
    if not folder.is_dir():
        return found
    for path in folder.glob(f"{_PREFIX}*"):
        state_file = path / STATE_NAME
        if path.is_dir() and state_file.is_file():
            state = json.loads(state_file.read_text())
            found.append(Checkpoint(path, int(state["step"]), state))
    return sorted(found, key=lambda c: c.step)


def save_checkpoint(folder: Path, step: int, linfusion: LinFusion, optimizer, state: dict, keep: int) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep` checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{_PREFIX}{step:08d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=folder))
    try:
        linfusion.save_pretrained(staging, dtype=torch.float32)  # fp32: resume must be exact
        torch.save(optimizer.state_dict(), staging / OPTIMIZER_NAME)
        (staging / STATE_NAME).write_text(json.dumps({**state, "step": step}, indent=1))
        if target.exists():  # a checkpoint of this step from an earlier, interrupted run
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old.folder, ignore_errors=True)
    return target


def load_checkpoint(checkpoint: Checkpoint, linfusion: LinFusion, optimizer) -> None:
    """Load a checkpoint's layers and optimizer state into the live run, in place."""
    saved = LinFusion.from_pretrained(checkpoint.folder, torch_dtype=torch.float32)
    with torch.no_grad():
        for key, value in linfusion.state_dict().items():
            value.copy_(saved.state_dict()[key].to(value.device, value.dtype))
    optimizer.load_state_dict(torch.load(checkpoint.folder / OPTIMIZER_NAME, map_location="cpu", weights_only=True))
