"""The published distillation objective and the per-layer attn1 capture it needs.

L = MSE(eps_s, target) + 0.5 MSE(eps_s, eps_t) + 0.5 * mean over layers MSE(attn1_s, attn1_t)

where eps_s / eps_t are the student's and the teacher's UNet outputs on the same noisy latents,
target is the noise (epsilon models) or the velocity (v-prediction models), and attn1_s / attn1_t
are the outputs of each self-attention layer (after to_out, before the block's residual add).

The attn1 outputs are taken with forward hooks on the `Attention` modules, not by changing the
processors: the student's processors are LinFusion's, the teacher's are diffusers' own, and hooks
see both the same way. Every MSE is computed in fp32 whatever the autocast dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from linfusion_engine.linfusion import self_attention_layers

TEACHER_WEIGHT = 0.5
FEATURE_WEIGHT = 0.5


class Attn1Capture:
    """Forward hooks that keep the latest output of every attn1 layer of a UNet, in published order.

    Use as a context manager around the UNet call; `outputs` is then a list with one tensor per
    layer (in the order of `LinFusion.modules_list`). Hooks are removed on exit, and outputs are
    cleared at each entry so one forward never sees another's tensors.
    """

    def __init__(self, unet: nn.Module, detach: bool = False) -> None:
        self.names = [name for name, _ in self_attention_layers(unet)]
        self._modules = [module for _, module in self_attention_layers(unet)]
        self.detach = detach
        self._outputs: dict[int, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, index: int):
        def keep(module, args, output):
            self._outputs[index] = output.detach() if self.detach else output
        return keep

    def __enter__(self) -> "Attn1Capture":
        self._outputs = {}
        self._handles = [module.register_forward_hook(self._hook(i)) for i, module in enumerate(self._modules)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def outputs(self) -> list[torch.Tensor]:
        missing = [self.names[i] for i in range(len(self.names)) if i not in self._outputs]
        if missing:
            raise RuntimeError(f"attn1 capture: layers {', '.join(missing)} did not run in this forward pass")
        return [self._outputs[i] for i in range(len(self.names))]


@dataclass
class LossTerms:
    """The total loss (with grad) and its three terms (detached), each already a mean."""

    total: torch.Tensor
    noise: torch.Tensor
    teacher: torch.Tensor
    feature: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {"loss": float(self.total.detach()), "loss_noise": float(self.noise),
                "loss_teacher": float(self.teacher), "loss_feature": float(self.feature)}


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(a.float(), b.float())


def distillation_loss(student_pred: torch.Tensor, teacher_pred: torch.Tensor, target: torch.Tensor,
                      student_attn: list[torch.Tensor], teacher_attn: list[torch.Tensor],
                      teacher_weight: float = TEACHER_WEIGHT, feature_weight: float = FEATURE_WEIGHT) -> LossTerms:
    """The published loss from the two UNets' outputs and their attn1 outputs (lists in layer order)."""
    if len(student_attn) != len(teacher_attn) or not student_attn:
        raise ValueError(f"distillation loss: {len(student_attn)} student vs {len(teacher_attn)} teacher attn1 "
                         "outputs; both UNets must have the same, non-empty set of self-attention layers")
    noise = _mse(student_pred, target)
    teacher = _mse(student_pred, teacher_pred.detach())
    feature = torch.stack([_mse(s, t.detach()) for s, t in zip(student_attn, teacher_attn)]).mean()
    total = noise + teacher_weight * teacher + feature_weight * feature
    return LossTerms(total=total, noise=noise.detach(), teacher=teacher.detach(), feature=feature.detach())


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict: the noise, or the velocity for v-prediction models."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"scheduler prediction_type {prediction_type!r}: distillation supports 'epsilon' and "
                     "'v_prediction'")
