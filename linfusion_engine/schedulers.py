"""Named samplers, the words manifests use (`scheduler: dpmpp_2m_karras`), mapped to diffusers.

`SCHEDULER_NAMES` is importable without torch or diffusers: manifest validation checks names
against it and must answer in about a second. `make_scheduler` imports diffusers when called.

Every scheduler is built from the loaded pipeline's own scheduler config, so the base model's
training schedule (betas, prediction type — v-prediction for SD-2.1 — timestep spacing) carries
over; a name only picks the sampling algorithm and its options.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import torch

# name -> (diffusers class name, options laid over the base config)
_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler",
                 {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    # SD's own PNDM setting: PLMS steps only (the Runge-Kutta warm-up costs 3 extra UNet calls).
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),  # diffusers needs scipy for this one
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}

SCHEDULER_NAMES: tuple[str, ...] = tuple(_SPECS)


def check_scheduler_name(name: str) -> None:
    """Raise ValueError naming the known schedulers when `name` is not one of them."""
    if name not in _SPECS:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULER_NAMES)}")


def make_scheduler(name: str, base_config: Mapping[str, Any]):
    """A new scheduler `name` configured from a pipeline's scheduler config (`pipe.scheduler.config`).

    A fresh object per call: schedulers keep per-run state (timesteps, multistep history).
    Keys of the base config that the target class does not take are dropped by diffusers.
    """
    check_scheduler_name(name)
    import diffusers

    class_name, options = _SPECS[name]
    cls = getattr(diffusers, class_name)
    # Keys diffusers stores about the config's origin, not settings of the schedule.
    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    if name == "lms":
        from diffusers.utils import is_scipy_available

        if not is_scipy_available():
            raise ImportError("scheduler 'lms' needs scipy, which is not installed: `pip install scipy`, "
                              "or pick another scheduler")
    return cls.from_config({**config, **options})


def noised(scheduler, z0: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """z0 noised to `timestep` in the scheduler's own parameterisation (sigma or alpha based).

    Both highres' skip residual and inpainting's kept area pull the latents toward a clean
    latent noised to the *next* step, so this lives with the samplers rather than with either.

    Sigma schedulers track their position (`step_index`) and would noise to the current step's
    sigma whatever timestep is passed, so the sigma of `timestep` is looked up here instead.
    """
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and hasattr(scheduler, "index_for_timestep"):
        index = int((scheduler.timesteps == timestep).nonzero()[-1])
        sigma = sigmas[index].to(z0.device, z0.dtype)
        return z0 + noise * sigma
    return scheduler.add_noise(z0, noise, timestep.reshape(1))
