"""Train `shapes-sd15`'s built-in conditioning on this CPU: a `seg` ControlNet and an IP-Adapter.

    python -m toy.train_conditioning controlnet --run toy/runs/control --steps 2000 [--resume]
    python -m toy.train_conditioning control-check --run toy/runs/control   # 32 held-out maps, read back
    python -m toy.train_conditioning export-controlnet --run toy/runs/control \
        --out linfusion_engine/builtin_models/shapes-sd15-controlnet-seg
    python -m toy.train_conditioning ip-adapter --run toy/runs/ip --steps 2000 [--resume]
    python -m toy.train_conditioning ip-check --run toy/runs/ip
    python -m toy.train_conditioning export-ip-adapter --run toy/runs/ip \
        --out linfusion_engine/builtin_models/shapes-sd15-ip-adapter

Both train against the committed, frozen `shapes-sd15` (its UNet and text encoder are never
updated), on the latent data set the model was trained on (`--data`, `python -m toy.train_shapes
data`): latent i is scene `scene_from_seed(i, jitter=True)`, so the scene's ground-truth mask and
colours are regenerated exactly from its index instead of being stored.

What each learns, and how the data makes it learn that and nothing else:
- ControlNet `seg`: the control map is the object's silhouette (white on black). In 40% of the
  samples the prompt names another shape and another position than the map shows (the colours
  stay true), so geometry can only come from the map; 10% empty and 10% colour-less prompts as in
  the base model's training.
- IP-Adapter: the reference is a *different* scene with the same object and background colours
  (another shape, another position), so the only thing it can lend is its colours; the prompt is
  the colour-less one (`a circle on the left`) 70% of the time, empty 10%, full 20%.

Checkpoints, resumption and the loss log work as in `toy.train_shapes` (`Run`).
"""

from __future__ import annotations

import argparse
import functools
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from toy.shapes import (COLORS, POSITIONS, SHAPES, Scene, control_map, draw, jittered, other_geometry,
                        scene_from_seed)
from toy.train_shapes import EVAL_SEED_START, NATIVE, Run, cosine_lr, rng_state, tokenize, training_scheduler

BASE = Path(__file__).resolve().parents[1] / "linfusion_engine" / "builtin_models" / "shapes-sd15"
CONTROLNET = BASE.with_name("shapes-sd15-controlnet-seg")  # the committed seg ControlNet
DEFAULT_DATA = Path("toy/runs/shapes/data.pt")
# The control map's encoder (4 widths = 3 stride-2 convs = the VAE's 8x): small, the map is binary.
CONTROL_EMBEDDING_CHANNELS = (16, 32, 64, 128)
CONTRADICT = 0.4  # share of ControlNet samples whose prompt names another shape and position


# -- the frozen base -------------------------------------------------------------------------------
def load_base(base: Path = BASE):
    """(unet, text_encoder, tokenizer) of the committed model, float32, frozen, in eval mode."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from linfusion_engine.tokenizers import clip_tokenizer

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", torch_dtype=torch.float32)
    for module in (unet, text):
        module.requires_grad_(False)
        module.eval()
    return unet, text, clip_tokenizer()


class PromptBank:
    """Every prompt the training can ask for, encoded once by the frozen text encoder.

    The world has 840 full prompts, 15 colour-less ones and the empty one; encoding them once
    (17 MB) is cheaper than running the text encoder on every batch.
    """

    def __init__(self, text, tokenizer):
        prompts = [""]
        for color in COLORS:
            for background in COLORS:
                if background != color:
                    for shape in SHAPES:
                        for position in POSITIONS:
                            prompts.append(Scene(color, shape, position, background).prompt)
        for shape in SHAPES:
            for position in POSITIONS:
                prompts.append(Scene("red", shape, position, "blue").colorless_prompt)
        self.index = {prompt: i for i, prompt in enumerate(prompts)}
        with torch.no_grad():
            chunks = [text(tokenize(tokenizer, prompts[i:i + 128])).last_hidden_state
                      for i in range(0, len(prompts), 128)]
        self.hidden = torch.cat(chunks)  # (P, 77, TEXT_HIDDEN)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self.hidden[[self.index[p] for p in prompts]]  # (B, 77, TEXT_HIDDEN)


def load_latents(data: Path) -> tuple[torch.Tensor, float]:
    """(latents scaled to unit variance (N, 4, 16, 16), scaling factor) of the base model's data set."""
    loaded = torch.load(data, weights_only=False)
    return loaded["latents"] * loaded["scaling_factor"], loaded["scaling_factor"]


def seg_tensor(scenes: list[Scene], side: int = NATIVE) -> torch.Tensor:
    """Control maps as the pipeline feeds them: (B, 3, side, side) float in [0, 1]."""
    maps = np.stack([np.asarray(control_map(scene, side, side)) for scene in scenes])  # (B, H, W, 3) uint8
    return torch.from_numpy(maps).permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W)


@functools.lru_cache(maxsize=1)
def _alphas_cumprod() -> torch.Tensor:
    return training_scheduler().alphas_cumprod  # (1000,)


def noised(x0: torch.Tensor, generator: torch.Generator, high_t: float, high_t_from: int):
    """(noisy latents, timesteps, v target): the base model's v-prediction objective, with `high_t`
    of the batch drawn from `high_t_from`..999, where the layout is decided."""
    alphas = _alphas_cumprod()
    batch = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    if high_t > 0:
        noisier = torch.rand(batch, generator=generator) < high_t
        t = torch.where(noisier, torch.randint(high_t_from, 1000, (batch,), generator=generator), t)
    a = alphas[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
    target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v = sqrt(a) eps - sqrt(1 - a) x0
    return noisy, t, target


def optimise(optimizer, params, loss: torch.Tensor) -> float:
    """One clipped AdamW step on `loss`; returns its value (both trainers' inner step)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return loss.item()


def log_progress(run: Run, stage: str, step: int, running: list[float], optimizer, started: float) -> None:
    """The loss log line and record every 50 steps (both trainers)."""
    run.log(stage, {"step": step, "loss": float(np.mean(running)), "lr": optimizer.param_groups[0]["lr"],
                    "seconds": round(time.time() - started, 1)})
    print(f"{stage} step {step}: loss {np.mean(running):.4f} ({time.time() - started:.0f} s)", flush=True)


# -- the ControlNet ------------------------------------------------------------------------------
def controlnet_prompt(scene: Scene, py: random.Random) -> str:
    """The prompt a ControlNet sample is trained with (see the module docstring for the shares)."""
    draw_ = py.random()
    if draw_ < 0.1:
        return ""
    if draw_ < 0.2:
        return scene.colorless_prompt
    if draw_ < 0.2 + CONTRADICT:
        return other_geometry(scene, py).prompt
    return scene.prompt


def train_controlnet(run: Run, steps: int, resume: bool, data: Path = DEFAULT_DATA, batch: int = 32,
                     seed: int = 7, lr: float = 3e-4, high_t: float = 0.5, high_t_from: int = 600) -> None:
    """A `ControlNetModel.from_unet` copy of the frozen UNet's encoder, trained on seg maps."""
    from diffusers import ControlNetModel

    unet, text, tokenizer = load_base()
    bank = PromptBank(text, tokenizer)
    latents, _ = load_latents(data)
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONTROL_EMBEDDING_CHANNELS)
    controlnet.train()
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    py = random.Random(seed)
    state, step = run.resume_or_start("controlnet", resume, optimizer, generator, py)
    if state is not None:
        controlnet.load_state_dict(state["controlnet"])
    started, running = time.time(), []
    while step < steps:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, 100)
        index = torch.randint(0, latents.shape[0], (batch,), generator=generator)
        scenes = [scene_from_seed(int(i), jitter=True) for i in index]
        hidden = bank.encode([controlnet_prompt(scene, py) for scene in scenes])  # (B, 77, C)
        noisy, t, target = noised(latents[index], generator, high_t, high_t_from)
        down, mid = controlnet(noisy, t, encoder_hidden_states=hidden, controlnet_cond=seg_tensor(scenes),
                               return_dict=False)
        prediction = unet(noisy, t, encoder_hidden_states=hidden, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample
        running.append(optimise(optimizer, controlnet.parameters(), F.mse_loss(prediction, target)))
        step += 1
        if step % 50 == 0 or step == steps:
            log_progress(run, "controlnet", step, running, optimizer, started)
            running = []
        if step % 250 == 0 or step == steps:
            run.save("controlnet", step, {"controlnet": controlnet.state_dict(), "config": dict(controlnet.config),
                                          "optimizer": optimizer.state_dict(), "step": step,
                                          "rng": rng_state(generator, py)})


def load_controlnet_checkpoint(run: Run):
    from diffusers import ControlNetModel

    state = run.latest("controlnet")
    if state is None:
        raise SystemExit("no ControlNet checkpoint: run the `controlnet` stage first")
    controlnet = ControlNetModel.from_config(state["config"])
    controlnet.load_state_dict(state["controlnet"])
    return controlnet.eval(), state["step"]


def export_controlnet(run: Run, out: Path, dtype: str = "float16") -> None:
    """The newest checkpoint as a diffusers ControlNet folder (config.json + safetensors)."""
    controlnet, step = load_controlnet_checkpoint(run)
    controlnet.to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    print(f"exported ControlNet step {step} to {out}", flush=True)


def control_check(run: Run, count: int = 32, steps: int = 20, guidance: float = 3.0) -> dict:
    """Render `count` held-out maps with prompts that name another shape and position; read them back.

    A progress check (diffusers' own pipeline, softmax, 128 px); the product's figures come from
    `bench/quality_bench.py` through the engine.
    """
    from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline

    from toy.analyzer import analyze

    controlnet, step = load_controlnet_checkpoint(run)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        BASE, controlnet=controlnet, tokenizer=load_base()[2], safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, torch_dtype=torch.float32)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    py = random.Random(0)
    hits = {"shape": 0, "position": 0, "color": 0, "background": 0}
    for index in range(count):
        scene = scene_from_seed(EVAL_SEED_START + index)
        asked = other_geometry(scene, py)
        control = control_map(scene, NATIVE, NATIVE)
        image = pipe(asked.prompt, image=control, num_inference_steps=steps, guidance_scale=guidance,
                     height=NATIVE, width=NATIVE, generator=torch.Generator().manual_seed(index)).images[0]
        reading = analyze(image)
        hits["shape"] += reading.shape == scene.shape
        hits["position"] += reading.position == scene.position
        hits["color"] += reading.color == scene.color
        hits["background"] += reading.background == scene.background
        if index < 8:
            image.save(run.root / f"control-check-{index}.png")
    report = {key: round(value / count, 3) for key, value in hits.items()}
    print(f"control check at step {step} ({count} maps, prompts naming another shape and position): {report}",
          flush=True)
    return report


# -- the IP-Adapter -----------------------------------------------------------------------------
IMAGE_ENCODER_SIZE = 64  # the reference is read at 64x64: 64 patches of 8 px
IMAGE_EMBED_DIM = 64
IP_TOKENS = 4  # a plain IP-Adapter projects one image to 4 extra text tokens
IP_WEIGHT_NAME = "ip-adapter_shapes-sd15.safetensors"


def reference_scene(scene: Scene, py: random.Random) -> Scene:
    """A jittered scene with `scene`'s colours and another shape and position: all a reference may lend."""
    return jittered(other_geometry(scene, py), py)


def ip_prompt(scene: Scene, py: random.Random) -> str:
    draw_ = py.random()
    if draw_ < 0.1:
        return ""
    return scene.colorless_prompt if draw_ < 0.8 else scene.prompt


def initial_ip_adapter(unet, folder: Path, seed: int) -> None:
    """Write a fresh IP-Adapter in the layout `load_ip_adapter` reads: `models/<weights>` in the
    original key format and `models/image_encoder/` (a small CLIPVisionModelWithProjection).

    As in the IP-Adapter paper, each `to_k_ip`/`to_v_ip` starts as a copy of its layer's text
    `to_k`/`to_v`, so the image tokens are read like text tokens from the first step.
    """
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cross_dim = unet.config.cross_attention_dim
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=IMAGE_ENCODER_SIZE, patch_size=8, projection_dim=IMAGE_EMBED_DIM))
    projection = torch.nn.Linear(IMAGE_EMBED_DIM, IP_TOKENS * cross_dim)
    tensors = {"image_proj.proj.weight": projection.weight.detach().clone(),  # (tokens * cross, embed)
               "image_proj.proj.bias": projection.bias.detach().clone(),
               "image_proj.norm.weight": torch.ones(cross_dim), "image_proj.norm.bias": torch.zeros(cross_dim)}
    key_id = 1  # keyed 1, 3, 5... over the cross-attention layers in attn_processors order
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        attn = unet.get_submodule(name[: -len(".processor")])
        tensors[f"ip_adapter.{key_id}.to_k_ip.weight"] = attn.to_k.weight.detach().clone()
        tensors[f"ip_adapter.{key_id}.to_v_ip.weight"] = attn.to_v.weight.detach().clone()
        key_id += 2
    models = folder / "models"
    models.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(models / IP_WEIGHT_NAME))
    encoder.save_pretrained(models / "image_encoder", safe_serialization=True)


def ip_pipeline(folder: Path):
    """`shapes-sd15` (float32) with the IP-Adapter in `folder` loaded the product's way."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(BASE, tokenizer=load_base()[2], safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False,
                                                   torch_dtype=torch.float32)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.load_ip_adapter(str(folder), subfolder="models", weight_name=IP_WEIGHT_NAME, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ip_trainables(pipe) -> dict[str, torch.nn.Module]:
    """The modules an IP-Adapter trains: the image encoder, the projection, every to_k_ip/to_v_ip."""
    layers = {name: processor for name, processor in pipe.unet.attn_processors.items()
              if not name.endswith("attn1.processor")}
    return {"image_encoder": pipe.image_encoder, "image_proj": pipe.unet.encoder_hid_proj,
            "ip_layers": torch.nn.ModuleList(layers.values())}


def save_ip_adapter(pipe, folder: Path, dtype: torch.dtype = torch.float32) -> None:
    """The trained adapter in `load_ip_adapter`'s original key format (see `initial_ip_adapter`)."""
    from safetensors.torch import save_file

    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    tensors = {"image_proj.proj.weight": projection.image_embeds.weight, "image_proj.proj.bias": projection.image_embeds.bias,
               "image_proj.norm.weight": projection.norm.weight, "image_proj.norm.bias": projection.norm.bias}
    key_id = 1
    for name, processor in pipe.unet.attn_processors.items():
        if name.endswith("attn1.processor"):
            continue
        tensors[f"ip_adapter.{key_id}.to_k_ip.weight"] = processor.to_k_ip[0].weight
        tensors[f"ip_adapter.{key_id}.to_v_ip.weight"] = processor.to_v_ip[0].weight
        key_id += 2
    models = folder / "models"
    models.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(dtype).contiguous() for k, v in tensors.items()}, str(models / IP_WEIGHT_NAME))
    pipe.image_encoder.to(dtype).save_pretrained(models / "image_encoder", safe_serialization=True)
    pipe.image_encoder.to(torch.float32)


def reference_pixels(pipe, images: list) -> torch.Tensor:
    """References as the pipeline feeds them to the image encoder: (B, 3, S, S), CLIP-normalised."""
    return pipe.feature_extractor(images, return_tensors="pt").pixel_values  # (B, 3, S, S)


def train_ip_adapter(run: Run, steps: int, resume: bool, data: Path = DEFAULT_DATA, batch: int = 32,
                     seed: int = 11, lr: float = 3e-4, drop_image: float = 0.1,
                     object_weight: float = 1.0, with_control: float = 0.0) -> None:
    """Image encoder, projection and decoupled cross-attention, the UNet and text encoder frozen.

    `drop_image`: the share of samples with a zero image embedding, what classifier-free guidance
    feeds the unconditional branch. `object_weight`: the loss weight of latent pixels under the
    object against 1 for the background. The object is about a tenth of the image, so with plain
    MSE its colour, the thing the adapter learns last, is a tenth of the signal. `with_control`:
    the share of samples rendered as `control+ip` is asked at inference: the committed seg
    ControlNet (frozen) steers with the scene's map while the colour-less prompt names another
    shape and place, so the adapter learns to lend colours without pulling the outline away from
    the map (trained without it, the map's shape held in 49% of such renders, against 96% alone).
    """
    import tempfile

    unet, text, tokenizer = load_base()
    bank = PromptBank(text, tokenizer)
    latents, _ = load_latents(data)
    with tempfile.TemporaryDirectory() as folder:
        initial_ip_adapter(unet, Path(folder), seed)
        pipe = ip_pipeline(Path(folder))
    pipe.unet.requires_grad_(False)
    trainables = ip_trainables(pipe)
    params = [p for module in trainables.values() for p in module.parameters()]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    py = random.Random(seed)
    controlnet = None
    if with_control > 0:
        from diffusers import ControlNetModel

        controlnet = ControlNetModel.from_pretrained(CONTROLNET, torch_dtype=torch.float32).eval().requires_grad_(False)
    state, step = run.resume_or_start("ip_adapter", resume, optimizer, generator, py)
    if state is not None:
        for key, module in trainables.items():
            module.load_state_dict(state[key])
    for module in trainables.values():
        module.train()
    started, running = time.time(), []
    while step < steps:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, 100)
        index = torch.randint(0, latents.shape[0], (batch,), generator=generator)
        scenes = [scene_from_seed(int(i), jitter=True) for i in index]
        references = [draw(reference_scene(scene, py), NATIVE, NATIVE) for scene in scenes]
        controlled = [with_control > 0 and py.random() < with_control for _ in scenes]
        prompts = [other_geometry(scene, py).colorless_prompt if c else ip_prompt(scene, py)
                   for scene, c in zip(scenes, controlled)]
        hidden = bank.encode(prompts)  # (B, 77, C)
        embeds = pipe.image_encoder(reference_pixels(pipe, references)).image_embeds  # (B, IMAGE_EMBED_DIM)
        keep = (torch.rand(batch, generator=generator) >= drop_image).float()[:, None]  # (B, 1)
        embeds = (embeds * keep)[:, None]  # (B, 1, IMAGE_EMBED_DIM): one reference image each
        noisy, t, target = noised(latents[index], generator, 0.3, 600)
        residuals = {}
        if controlnet is not None:
            with torch.no_grad():
                down, mid = controlnet(noisy, t, encoder_hidden_states=hidden, controlnet_cond=seg_tensor(scenes),
                                       return_dict=False)
            on = torch.tensor(controlled, dtype=torch.float32).view(-1, 1, 1, 1)  # (B, 1, 1, 1): 0 = no map
            residuals = {"down_block_additional_residuals": [d * on for d in down],
                         "mid_block_additional_residual": mid * on}
        prediction = pipe.unet(noisy, t, encoder_hidden_states=hidden, added_cond_kwargs={"image_embeds": [embeds]},
                               **residuals).sample
        weights = 1 + (object_weight - 1) * seg_tensor(scenes, latents.shape[-1])[:, :1]  # (B, 1, h, w)
        loss = ((prediction - target) ** 2 * weights).mean() / weights.mean()
        running.append(optimise(optimizer, params, loss))
        step += 1
        if step % 50 == 0 or step == steps:
            log_progress(run, "ip_adapter", step, running, optimizer, started)
            running = []
        if step % 250 == 0 or step == steps:
            run.save("ip_adapter", step, {**{key: module.state_dict() for key, module in trainables.items()},
                                          "optimizer": optimizer.state_dict(), "step": step,
                                          "rng": rng_state(generator, py), "seed": seed})


def load_ip_checkpoint(run: Run):
    """A pipeline with the newest IP-Adapter checkpoint loaded, and its step."""
    import tempfile

    state = run.latest("ip_adapter")
    if state is None:
        raise SystemExit("no IP-Adapter checkpoint: run the `ip-adapter` stage first")
    unet, _, _ = load_base()
    with tempfile.TemporaryDirectory() as folder:
        initial_ip_adapter(unet, Path(folder), state["seed"])
        pipe = ip_pipeline(Path(folder))
    for key, module in ip_trainables(pipe).items():
        module.load_state_dict(state[key])
        module.eval()
    return pipe, state["step"]


def export_ip_adapter(run: Run, out: Path, dtype: str = "float16") -> None:
    pipe, step = load_ip_checkpoint(run)
    save_ip_adapter(pipe, out, getattr(torch, dtype))
    print(f"exported IP-Adapter step {step} to {out}", flush=True)


def ip_check(run: Run, count: int = 32, steps: int = 20, guidance: float = 3.0, scale: float = 1.0) -> dict:
    """Render `count` held-out colour-less prompts with a reference of other colours; read them back."""
    from toy.analyzer import analyze

    pipe, step = load_ip_checkpoint(run)
    pipe.set_ip_adapter_scale(scale)
    py = random.Random(0)
    hits = {"color": 0, "background": 0, "shape": 0, "position": 0}
    for index in range(count):
        scene = scene_from_seed(EVAL_SEED_START + index)
        reference = draw(reference_scene(scene, py), NATIVE, NATIVE)
        image = pipe(scene.colorless_prompt, ip_adapter_image=reference, num_inference_steps=steps,
                     guidance_scale=guidance, height=NATIVE, width=NATIVE,
                     generator=torch.Generator().manual_seed(index)).images[0]
        reading = analyze(image)
        for key in hits:
            hits[key] += getattr(reading, key) == getattr(scene, key)
        if index < 8:
            image.save(run.root / f"ip-check-{index}.png")
    report = {key: round(value / count, 3) for key, value in hits.items()}
    print(f"ip check at step {step}, scale {scale} ({count} colour-less prompts): {report}", flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["controlnet", "control-check", "export-controlnet", "ip-adapter",
                                          "ip-check", "export-ip-adapter"])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--object-weight", type=float, default=1.0,
                        help="ip-adapter: loss weight under the object (1: plain MSE)")
    parser.add_argument("--with-control", type=float, default=0.0,
                        help="ip-adapter: share of samples steered by the committed seg ControlNet")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run = Run(args.run)
    if args.stage == "controlnet":
        train_controlnet(run, args.steps, args.resume, data=args.data, batch=args.batch, lr=args.lr)
    elif args.stage == "control-check":
        control_check(run, count=args.count)
    elif args.stage == "export-controlnet":
        if args.out is None:
            parser.error("export-controlnet needs --out")
        export_controlnet(run, args.out, args.dtype)
    elif args.stage == "ip-adapter":
        train_ip_adapter(run, args.steps, args.resume, data=args.data, batch=args.batch, lr=args.lr,
                         object_weight=args.object_weight, with_control=args.with_control)
    elif args.stage == "ip-check":
        ip_check(run, count=args.count, scale=args.scale)
    elif args.stage == "export-ip-adapter":
        if args.out is None:
            parser.error("export-ip-adapter needs --out")
        export_ip_adapter(run, args.out, args.dtype)


if __name__ == "__main__":
    main()
