"""Train `shapes-sd15`, the built-in model whose images a program can judge, on this CPU.

    python -m toy.train_shapes vae   --run toy/runs/shapes --steps 1500 [--resume]
    python -m toy.train_shapes data  --run toy/runs/shapes --count 12000
    python -m toy.train_shapes unet  --run toy/runs/shapes --steps 6000 [--resume]
    python -m toy.train_shapes decoder --run toy/runs/shapes --steps 1500 [--resume]  # sharper decodes
    python -m toy.train_shapes check  --run toy/runs/shapes     # 32 held-out prompts, read back
    python -m toy.train_shapes probe  --run toy/runs/shapes     # do position words move the object?
    python -m toy.train_shapes layout --run toy/runs/shapes     # the same, in seconds, at t = 999
    python -m toy.train_shapes colours --run toy/runs/shapes    # does the VAE keep each colour at each size?
    python -m toy.train_shapes export --run toy/runs/shapes --out linfusion_engine/builtin_models/shapes-sd15

The model has exactly SD-1.5's diffusers pipeline layout (so every path of the engine applies):
an `AutoencoderKL` that downsamples 8x to 4 latent channels, a `UNet2DConditionModel` with
self-attention at its high-resolution levels, a small `CLIPTextModel` over the project's real
CLIP tokenizer (77 tokens, 49,408 ids) and SD's DDIM schedule. Only its widths are small.

Why stages: the VAE is trained first on pixels (L1 + MSE, a tiny KL weight), then a data set of
latents is encoded once with it, so the UNet and text encoder train on cached latents (the
expensive part of SD training, the VAE encode, is paid once). Every stage writes checkpoints
into `--run` (never into git) and `--resume` continues from the newest one with the same RNG
streams; `loss.jsonl` logs the curve. Only `export` writes the committed model folder.

Training choices, each for a reason:
- Offset noise (0.1 x a per-channel constant added to the noise): the world is flat colours, and
  SD's schedule leaves a little signal at t=999, so without it a model struggles to make a
  whole background darker or lighter than mid-grey (the known "offset noise" fix).
- 10% empty prompts, for classifier-free guidance; 10% colour-less prompts (`a circle on the
  left`), which the IP-Adapter issue needs (the colours then come from elsewhere).
- An EMA of the weights is what gets exported: short training runs sample much better from it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from toy.shapes import draw, scene_from_seed

NATIVE = 128  # the model's native side in pixels
LATENT = NATIVE // 8  # 16: the latent side at the native size
TEXT_HIDDEN = 64
# Seeds below this are the training world; the quality bench draws its prompts from above it.
TRAIN_SEED_LIMIT = 10_000_000
EVAL_SEED_START = 10_000_000


# -- the architecture ---------------------------------------------------------------------------
def vae_config() -> dict:
    """AutoencoderKL, 8x down to 4 channels like SD's, at toy width; no mid-block attention.

    Without the mid-block attention the VAE is purely convolutional, so it decodes a 2048 px
    latent (a 256x256 token grid) at the same cost per pixel as a 128 px one, tiled or not.
    """
    return {
        "in_channels": 3, "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [16, 32, 64, 64],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": NATIVE,
        "mid_block_add_attention": False,
    }


def unet_config() -> dict:
    """SD-1.5's UNet layout at toy width: four levels (16, 8, 4 and 2 latent pixels at 128 px),
    cross- and self-attention at the three high-resolution levels and in the mid block, none at
    the lowest; 4 heads (`attention_head_dim` is the head count in these configs; SD-1.5's 8 would
    leave 4 channels per head at this width).

    Four levels as in SD-1.5, not three: at a 2x2 bottom every cell touches two borders, so the
    zero padding tells each where it is, and the prompt's position words have somewhere to land
    (a three-level (32, 64, 128) UNet trained 6,500 steps followed colours but placed objects by
    the noise alone). Widths chosen by step time on this 2-core CPU.
    """
    return {
        "sample_size": LATENT,
        "in_channels": 4, "out_channels": 4,
        "block_out_channels": [32, 64, 128, 128],
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": TEXT_HIDDEN,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    }


def text_config():
    from transformers import CLIPTextConfig

    from linfusion_engine.tokenizers import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE

    # Token ids are OpenAI CLIP's: start 49406, end (and pad) 49407.
    return CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH,
                          projection_dim=TEXT_HIDDEN, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def scheduler_config() -> dict:
    """SD-1.5's beta range, rescaled to zero terminal SNR, with v-prediction.

    SD-1.5's own schedule (scaled_linear 0.00085..0.012, epsilon) leaves sqrt(alpha_bar) = 0.07 of
    the image in x_t at t = 999. In this world that leak is fatal: a flat-colour object is a strong,
    object-sized signal, so a model trained on it learns to read the layout (which shape, where)
    from the leak, and when sampling starts from pure noise it takes the layout from the noise,
    whatever the prompt says (measured: the first run, 6,500 steps, put the same object at the same
    place for five different position phrases). Rescaled to zero terminal SNR (Lin et al. 2024,
    diffusers' `rescale_betas_zero_snr`), x_999 holds no image at all, so the layout must come from
    the prompt; v-prediction keeps the objective defined there. "trailing" spacing makes the
    samplers start at t = 999. SD-2.1 uses v-prediction too: the engine's paths all handle it.
    """
    return {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "v_prediction",
            "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}


def training_scheduler():
    """The noise schedule training draws from: `scheduler_config` less the sampling-only keys."""
    from diffusers import DDPMScheduler

    sampling_only = ("set_alpha_to_one", "steps_offset", "timestep_spacing")
    return DDPMScheduler(**{k: v for k, v in scheduler_config().items() if k not in sampling_only})


# -- run folders and checkpoints -----------------------------------------------------------------
@dataclass
class Run:
    """A training run's folder: checkpoints per stage, the latent data set, the loss log."""

    root: Path

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def checkpoints(self, stage: str) -> list[Path]:
        return sorted(self.stage_dir(stage).glob("step-*.pt"))

    def log(self, stage: str, record: dict) -> None:
        self.stage_dir(stage).mkdir(parents=True, exist_ok=True)
        with (self.stage_dir(stage) / "loss.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def save(self, stage: str, step: int, state: dict, keep: int = 2) -> None:
        """Write through a temp file, then rename: a kill mid-save never leaves a torn checkpoint."""
        folder = self.stage_dir(stage)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"step-{step:08d}.pt"
        tmp = target.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(target)
        for old in self.checkpoints(stage)[:-keep]:
            old.unlink()

    def resume_or_start(self, stage: str, resume: bool, optimizer, generator: torch.Generator,
                        py: random.Random) -> tuple[dict | None, int]:
        """(checkpoint, step) to go on from: the newest checkpoint with the optimizer and RNG streams
        restored (so the curve continues exactly), or (None, 0) for a fresh start. A fresh start over
        existing checkpoints is refused: it would interleave two runs' checkpoints."""
        state = self.latest(stage) if resume else None
        if state is None:
            if self.checkpoints(stage):
                sys.exit(f"{self.stage_dir(stage)} holds checkpoints: pass --resume, or use a new --run")
            return None, 0
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"], generator, py)
        print(f"{stage}: resumed at step {state['step']}", flush=True)
        return state, state["step"]

    def latest(self, stage: str) -> dict | None:
        found = self.checkpoints(stage)
        return torch.load(found[-1], weights_only=False) if found else None


def rng_state(generator: torch.Generator, py: random.Random) -> dict:
    return {"torch": generator.get_state(), "python": py.getstate(), "global": torch.get_rng_state()}


def restore_rng(state: dict, generator: torch.Generator, py: random.Random) -> None:
    generator.set_state(state["torch"])
    py.setstate(state["python"])
    torch.set_rng_state(state["global"])


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def image_tensor(images: list) -> torch.Tensor:
    """PIL RGB images -> (B, 3, H, W) float in [-1, 1], as the VAE reads them."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])  # (B, H, W, 3)
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1  # (B, 3, H, W)


# -- stage 1: the VAE ---------------------------------------------------------------------------
VAE_SIDES = (128, 128, 96, 192, 256)  # scene sides the VAE's crops are cut from


def random_crops(py: random.Random, batch: int, crop: int, sides: tuple[int, ...] = VAE_SIDES) -> torch.Tensor:
    """`batch` random crop x crop pieces of jittered training scenes, (B, 3, crop, crop) in [-1, 1].

    Scenes at 128 px (the native scale of edges) and some at 96-256 px, so the decoder sees the
    edge curvatures the SDEdit chain's larger sizes produce. Same draws, same order as the first
    VAE run, so its checkpoints resume onto the same curve.
    """
    crops = []
    for _ in range(batch):
        side = py.choice(sides)
        image = draw(scene_from_seed(py.randrange(TRAIN_SEED_LIMIT), jitter=True), side, side)
        x, y = py.randrange(side - crop + 1), py.randrange(side - crop + 1)
        crops.append(image.crop((x, y, x + crop, y + crop)))
    return image_tensor(crops)


def train_vae(run: Run, steps: int, resume: bool, batch: int = 16, crop: int = 64, seed: int = 1) -> None:
    """L1 + MSE reconstruction of random crops of jittered scenes, KL weight 1e-6."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config())
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    py = random.Random(seed)
    state, step = run.resume_or_start("vae", resume, optimizer, generator, py)
    if state is not None:
        vae.load_state_dict(state["model"])
    started = time.time()
    while step < steps:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, 1e-3, 100)
        pixels = random_crops(py, batch, crop)  # (B, 3, crop, crop)
        posterior = vae.encode(pixels).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        decoded = vae.decode(latents).sample
        recon = F.l1_loss(decoded, pixels) + F.mse_loss(decoded, pixels)
        kl = posterior.kl().mean() / (crop * crop)
        loss = recon + 1e-6 * kl * (crop * crop)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 25 == 0 or step == steps:
            run.log("vae", {"step": step, "loss": loss.item(), "recon": recon.item(), "kl": kl.item(),
                            "seconds": round(time.time() - started, 1)})
            print(f"vae step {step}: loss {loss.item():.4f} recon {recon.item():.4f}", flush=True)
        if step % 250 == 0 or step == steps:
            run.save("vae", step, {"model": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                   "rng": rng_state(generator, py), "config": vae_config()})


def train_decoder(run: Run, steps: int, resume: bool, batch: int = 16, crop: int = 64, seed: int = 3,
                  sides: tuple[int, ...] = VAE_SIDES) -> None:
    """Fine-tune the VAE's decoder alone, the encoder frozen: sharper edges and truer colours.

    The latent space is the encoder's, so the UNet trained on it stays valid while this runs;
    the decoder learns from the posterior mean, which is what the engine's stages decode.
    `crop` and `sides`: larger crops of larger scenes teach the decoder the flat expanses of the
    512 px and larger stages (a decoder tuned on 64 px crops alone drew orange as (227, 165, 41) at
    128 px and drifted to yellow, (233, 191, 47), at 512 px).
    """
    vae = load_vae(run, stage="vae")
    for parameter in vae.parameters():
        parameter.requires_grad_(False)
    trainable = [p for name, p in vae.named_parameters() if name.startswith(("decoder.", "post_quant_conv."))]
    for parameter in trainable:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=3e-4, weight_decay=0.0)
    py = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    state, step = run.resume_or_start("decoder", resume, optimizer, generator, py)
    if state is not None:
        vae.load_state_dict(state["model"])
    vae.train()
    started = time.time()
    while step < steps:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, 3e-4, 50)
        pixels = random_crops(py, batch, crop, sides)  # (B, 3, crop, crop)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mean  # (B, 4, crop/8, crop/8)
        decoded = vae.decode(latents).sample
        loss = F.l1_loss(decoded, pixels) + F.mse_loss(decoded, pixels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        step += 1
        if step % 25 == 0 or step == steps:
            run.log("decoder", {"step": step, "loss": loss.item(), "seconds": round(time.time() - started, 1)})
            print(f"decoder step {step}: loss {loss.item():.4f}", flush=True)
        if step % 250 == 0 or step == steps:
            run.save("decoder", step, {"model": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                       "rng": rng_state(generator, py), "config": vae_config()})


def load_vae(run: Run, stage: str | None = None):
    """The newest VAE: the fine-tuned decoder's checkpoint when there is one (unless `stage` names one)."""
    from diffusers import AutoencoderKL

    state = run.latest(stage) if stage else (run.latest("decoder") or run.latest("vae"))
    if state is None:
        sys.exit("no VAE checkpoint: run the `vae` stage first")
    vae = AutoencoderKL(**state["config"])
    vae.load_state_dict(state["model"])
    return vae.eval()


# -- stage 2: the latent data set ----------------------------------------------------------------
def encode_data(run: Run, count: int, seed_start: int = 0) -> None:
    """Encode `count` jittered 128 px scenes once; store latent means, the scaling factor, prompts.

    The scaling factor is 1 / std of the latents, as SD's 0.18215 was chosen: the UNet then
    sees unit-variance latents and the pipeline's `latents * scaling_factor` is exact.
    """
    vae = load_vae(run)
    means, scenes = [], []
    with torch.no_grad():
        for start in range(seed_start, seed_start + count, 64):
            seeds = range(start, min(start + 64, seed_start + count))
            batch_scenes = [scene_from_seed(seed, jitter=True) for seed in seeds]
            pixels = image_tensor([draw(scene, NATIVE, NATIVE) for scene in batch_scenes])
            means.append(vae.encode(pixels).latent_dist.mean)  # (b, 4, 16, 16)
            scenes.extend(batch_scenes)
            if len(scenes) % 1024 < 64:
                print(f"data: {len(scenes)}/{count}", flush=True)
    latents = torch.cat(means)  # (count, 4, 16, 16)
    scaling = float(1.0 / latents.std())
    prompts = [scene.prompt for scene in scenes]
    colorless = [scene.colorless_prompt for scene in scenes]
    run.root.mkdir(parents=True, exist_ok=True)
    torch.save({"latents": latents, "scaling_factor": scaling, "prompts": prompts, "colorless": colorless},
               run.root / "data.pt")
    print(f"data: {count} latents, std {latents.std():.3f}, scaling_factor {scaling:.4f}", flush=True)


# -- stage 3: UNet and text encoder --------------------------------------------------------------
def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids  # (B, 77)


def low_frequency_noise(shape: tuple, generator: torch.Generator, weight: float) -> torch.Tensor:
    """Gaussian noise at the object's scale (4x4 and 8x8 grids, upsampled), `weight` each: (B, C, H, W).

    SD's schedule leaves sqrt(alpha_bar) = 0.07 of the image in x_t even at t = 999. A flat-colour
    object is a strong, object-sized signal, so a model trained on it reads the layout (where the
    object is, which shape) from that leak instead of from the prompt, and at sampling time, when
    the start is pure noise, takes it from whatever the noise suggests. Noise with power at the
    object's scale drowns the leak at high t, so there the layout can only come from the text.
    """
    batch, channels, height, width = shape
    total = torch.zeros(shape)
    for grid in (4, 8):
        coarse = torch.randn((batch, channels, grid, grid), generator=generator)  # (B, C, g, g)
        total += weight * F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return total


def train_unet(run: Run, steps: int, resume: bool, batch: int = 32, seed: int = 2, lr: float = 5e-4,
               high_t: float = 0.0, high_t_from: int = 500, low_frequency: float = 0.0,
               offset_noise: float = 0.0) -> None:
    """UNet and text encoder on the cached latents, v-prediction objective, EMA kept for export.

    `high_t`: the share of each batch whose timestep is drawn from `high_t_from`..999 instead of
    uniformly. Layout (where the object goes, which shape it is) is decided there; the
    first run (uniform t, 5000 steps) learned colours and backgrounds but placed objects almost
    at random, so the continuation spends more of its steps where the prompt's position matters.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from linfusion_engine.tokenizers import clip_tokenizer

    data = torch.load(run.root / "data.pt", weights_only=False)
    latents = data["latents"] * data["scaling_factor"]  # (N, 4, 16, 16), unit variance
    tokenizer = clip_tokenizer()
    ids_full = tokenize(tokenizer, data["prompts"])  # (N, 77)
    ids_colorless = tokenize(tokenizer, data["colorless"])  # (N, 77)
    ids_empty = tokenize(tokenizer, [""])  # (1, 77)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config())
    text = CLIPTextModel(text_config())
    ema_unet = UNet2DConditionModel(**unet_config())
    ema_text = CLIPTextModel(text_config())
    ema_unet.load_state_dict(unet.state_dict())
    ema_text.load_state_dict(text.state_dict())
    params = list(unet.parameters()) + list(text.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = training_scheduler()
    alphas = scheduler.alphas_cumprod  # (1000,)
    generator = torch.Generator().manual_seed(seed)
    py = random.Random(seed)
    state, step = run.resume_or_start("unet", resume, optimizer, generator, py)
    if state is not None:
        unet.load_state_dict(state["unet"])
        text.load_state_dict(state["text"])
        ema_unet.load_state_dict(state["ema_unet"])
        ema_text.load_state_dict(state["ema_text"])
    ema_pairs = list(zip(list(ema_unet.parameters()) + list(ema_text.parameters()), params))
    started = time.time()
    running = []
    while step < steps:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, 200)
        index = torch.randint(0, latents.shape[0], (batch,), generator=generator)
        x0 = latents[index]  # (B, 4, 16, 16)
        kind = torch.rand(batch, generator=generator)  # < 0.1 empty, < 0.2 colour-less, else full
        ids = torch.where((kind < 0.2)[:, None], ids_colorless[index], ids_full[index])  # (B, 77)
        ids = torch.where((kind < 0.1)[:, None], ids_empty.expand(batch, -1), ids)  # (B, 77)
        noise = torch.randn(x0.shape, generator=generator)
        if offset_noise > 0:
            noise = noise + offset_noise * torch.randn((batch, 4, 1, 1), generator=generator)
        if low_frequency > 0:
            noise = noise + low_frequency_noise(tuple(noise.shape), generator, low_frequency)
        t = torch.randint(0, 1000, (batch,), generator=generator)
        if high_t > 0:
            noisier = torch.rand(batch, generator=generator) < high_t
            t = torch.where(noisier, torch.randint(high_t_from, 1000, (batch,), generator=generator), t)
        a = alphas[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        hidden = text(ids).last_hidden_state  # (B, 77, TEXT_HIDDEN)
        prediction = unet(noisy, t, encoder_hidden_states=hidden).sample
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v = sqrt(a) eps - sqrt(1 - a) x0
        loss = F.mse_loss(prediction, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema_param, param in ema_pairs:
                ema_param.lerp_(param, 1 - decay)
        step += 1
        running.append(loss.item())
        if step % 50 == 0 or step == steps:
            run.log("unet", {"step": step, "loss": float(np.mean(running)), "lr": optimizer.param_groups[0]["lr"],
                             "seconds": round(time.time() - started, 1)})
            print(f"unet step {step}: loss {np.mean(running):.4f} ({time.time() - started:.0f} s)", flush=True)
            running = []
        if step % 250 == 0 or step == steps:
            run.save("unet", step, {"unet": unet.state_dict(), "text": text.state_dict(),
                                    "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                                    "optimizer": optimizer.state_dict(), "step": step,
                                    "rng": rng_state(generator, py)})


# -- export -------------------------------------------------------------------------------------
def export(run: Run, out: Path, dtype: str = "float32", ema: bool = True) -> None:
    """Write the EMA weights (or, `ema=False`, the raw ones: a look at a run in progress) as an
    SD-1.5 diffusers folder (no tokenizer/: the engine builds the real CLIP tokenizer for folders
    that lack one)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from linfusion_engine.tokenizers import clip_tokenizer

    data = torch.load(run.root / "data.pt", weights_only=False)
    state = run.latest("unet")
    vae_state = run.latest("decoder") or run.latest("vae")  # the encoder is the same in both
    vae = AutoencoderKL(**{**vae_config(), "scaling_factor": round(data["scaling_factor"], 5)})
    vae.load_state_dict(vae_state["model"])
    unet = UNet2DConditionModel(**unet_config())
    unet.load_state_dict(state["ema_unet" if ema else "unet"])
    text = CLIPTextModel(text_config())
    text.load_state_dict(state["ema_text" if ema else "text"])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=DDIMScheduler(**scheduler_config()), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    import shutil

    shutil.rmtree(out / "tokenizer", ignore_errors=True)
    print(f"exported step {state['step']} to {out}", flush=True)


def sample_check(run: Run, prompts: int = 32, steps: int = 20, guidance: float = 7.5) -> dict:
    """Render `prompts` held-out scenes from the newest UNet checkpoint and read them back.

    A progress check while training (diffusers' own pipeline, softmax attention, 128 px): the
    product's figures come from `bench/quality_bench.py` through the engine.
    """
    from toy.analyzer import analyze, matches

    pipe = load_checkpoint_pipeline(run)
    scenes = [scene_from_seed(EVAL_SEED_START + i) for i in range(prompts)]
    hits = {"color": 0, "shape": 0, "position": 0, "background": 0, "all": 0, "single": 0}
    for index, scene in enumerate(scenes):
        image = pipe(scene.prompt, num_inference_steps=steps, guidance_scale=guidance, height=NATIVE, width=NATIVE,
                     generator=torch.Generator().manual_seed(index)).images[0]
        reading = analyze(image)
        right = matches(reading, scene)
        for key, ok in right.items():
            hits[key] += ok
        hits["all"] += all(right.values())
        hits["single"] += reading.objects == 1
        if index < 8:
            image.save(run.root / f"check-{index}.png")
    report = {key: round(value / prompts, 3) for key, value in hits.items()}
    print(f"check ({prompts} prompts): {report}", flush=True)
    return report


def load_checkpoint_pipeline(run: Run, ema: bool = True):
    """The newest UNet checkpoint as a diffusers pipeline on the CPU (through a temp export)."""
    import tempfile

    from diffusers import StableDiffusionPipeline

    from linfusion_engine.tokenizers import clip_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        export(run, Path(folder), dtype="float32", ema=ema)
        pipe = StableDiffusionPipeline.from_pretrained(folder, tokenizer=clip_tokenizer(), safety_checker=None,
                                                       feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def probe(run: Run, ema: bool = False, steps: int = 20, seeds: tuple[int, ...] = (0, 1)) -> list[tuple]:
    """Does the prompt place the object? One prompt, each position phrase, the same seeds.

    A model that reads its layout from the noise (see `scheduler_config`) answers with one position
    per seed whatever the phrase; a model that follows the prompt answers each phrase with its own
    anchor. The raw weights by default: the EMA lags about a thousand steps behind.
    """
    from toy.analyzer import analyze
    from toy.shapes import POSITIONS

    pipe = load_checkpoint_pipeline(run, ema=ema)
    rows = []
    for seed in seeds:
        for position, anchor in POSITIONS.items():
            prompt = f"a red square {anchor.phrase}, blue background"
            image = pipe(prompt, num_inference_steps=steps, height=NATIVE, width=NATIVE,
                         generator=torch.Generator().manual_seed(seed)).images[0]
            reading = analyze(image)
            rows.append((seed, position, reading.position, reading.shape, reading.color))
            print(f"seed {seed} asked {position:6s} -> {reading.position} {reading.color} {reading.shape}", flush=True)
    followed = sum(asked == read for _, asked, read, _, _ in rows)
    print(f"probe: {followed}/{len(rows)} positions followed", flush=True)
    return rows


def colour_probe(run: Run, sides: tuple[int, ...] = (128, 256, 512, 1024)) -> int:
    """Does the VAE keep every palette colour at every size? Encode and decode one triangle per
    colour at each side; print the object's mean decoded colour and what the analyzer reads.
    Returns how many readings are wrong. (A VAE whose GroupNorms saw only small crops drifts with
    the image size: its orange read as yellow from 256 px on.)"""
    from PIL import Image

    from toy.analyzer import analyze
    from toy.shapes import PALETTE, Scene, object_mask

    vae = load_vae(run)
    wrong = 0
    for colour in PALETTE:
        background = "blue" if colour != "blue" else "white"
        cells = []
        for side in sides:
            scene = Scene(colour, "triangle", "center", background)
            with torch.no_grad():
                decoded = vae.decode(vae.encode(image_tensor([draw(scene, side, side)])).latent_dist.mean).sample
            pixels = ((decoded[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).numpy()  # (side, side, 3)
            mean = pixels[object_mask(scene, side, side)].mean(0).round().astype(int)
            read = analyze(Image.fromarray(pixels.round().astype(np.uint8))).color
            wrong += read != colour
            cells.append(f"{side}: {tuple(int(v) for v in mean)} {read}")
        print(f"{colour:7s} {PALETTE[colour]} -> " + ", ".join(cells), flush=True)
    print(f"colours: {wrong} wrong of {len(PALETTE) * len(sides)}", flush=True)
    return wrong


def layout_probe(run: Run, ema: bool = False, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Where the UNet puts the object at t = 999, per position phrase: a check in seconds.

    With zero terminal SNR, x_999 is pure noise and the v target there is minus the image, so the
    UNet's first prediction is its idea of the whole layout. This reads that prediction in latent
    space, no sampling, no VAE: the centre of mass of its deviation from its own mean, as fractions
    of the width and height. A model that follows the position words puts "left" near x = 0.25,
    "top" near y = 0.25; one that ignores them answers every phrase with one place.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from linfusion_engine.tokenizers import clip_tokenizer
    from toy.shapes import POSITIONS

    state = run.latest("unet")
    unet = UNet2DConditionModel(**unet_config())
    unet.load_state_dict(state["ema_unet" if ema else "unet"])
    text = CLIPTextModel(text_config())
    text.load_state_dict(state["ema_text" if ema else "text"])
    scheduler = training_scheduler()
    prompts = [f"a red square {anchor.phrase}, blue background" for anchor in POSITIONS.values()]
    noise = torch.randn((1, 4, LATENT, LATENT), generator=torch.Generator().manual_seed(seed))
    noise = noise.expand(len(prompts), -1, -1, -1)  # (P, 4, 16, 16): one start for every phrase
    t = torch.full((len(prompts),), 999)
    a = scheduler.alphas_cumprod[999]
    with torch.no_grad():
        hidden = text(tokenize(clip_tokenizer(), prompts)).last_hidden_state  # (P, 77, TEXT_HIDDEN)
        v = unet(noise, t, encoder_hidden_states=hidden).sample  # (P, 4, 16, 16)
    x0 = a.sqrt() * noise - (1 - a).sqrt() * v  # (P, 4, 16, 16): the predicted image latent
    energy = (x0 - x0.mean(dim=(2, 3), keepdim=True)).pow(2).sum(1)  # (P, 16, 16)
    weights = energy / energy.sum(dim=(1, 2), keepdim=True)  # (P, 16, 16)
    coords = (torch.arange(LATENT, dtype=torch.float32) + 0.5) / LATENT  # (16,): cell centres
    found = {}
    for name, w in zip(POSITIONS, weights):
        found[name] = (float((w.sum(0) * coords).sum()), float((w.sum(1) * coords).sum()))
        print(f"step {state['step']}: {name:6s} -> x {found[name][0]:.2f} y {found[name][1]:.2f} "
              f"(anchor {POSITIONS[name].x:.2f}, {POSITIONS[name].y:.2f})", flush=True)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["vae", "data", "unet", "decoder", "export", "check", "probe", "layout", "colours"])
    parser.add_argument("--run", type=Path, default=Path("toy/runs/shapes"))
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--count", type=int, default=12000)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--crop", type=int, default=64, help="decoder: crop side in pixels")
    parser.add_argument("--sides", default=",".join(map(str, VAE_SIDES)),
                        help="decoder: the scene sides crops are cut from, comma-separated")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"],
                        help="export: the weights' dtype on disk (the engine loads them at its own dtype; "
                             "float16 keeps the model under the 40 MB the repository allows)")
    parser.add_argument("--high-t", type=float, default=0.0, help="unet: share of timesteps drawn from --high-t-from..999")
    parser.add_argument("--high-t-from", type=int, default=500)
    parser.add_argument("--low-frequency", type=float, default=0.0,
                        help="unet: weight of the object-scale noise added at every step (see low_frequency_noise)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Run(args.run)
    if args.stage == "vae":
        train_vae(run, args.steps, args.resume, **({"batch": args.batch} if args.batch else {}))
    elif args.stage == "decoder":
        train_decoder(run, args.steps, args.resume, crop=args.crop, sides=tuple(int(x) for x in args.sides.split(",")),
                      **({"batch": args.batch} if args.batch else {}))
    elif args.stage == "data":
        encode_data(run, args.count)
    elif args.stage == "unet":
        train_unet(run, args.steps, args.resume, high_t=args.high_t, high_t_from=args.high_t_from, low_frequency=args.low_frequency, **({"batch": args.batch} if args.batch else {}))
    elif args.stage == "check":
        sample_check(run)
    elif args.stage == "probe":
        probe(run)
    elif args.stage == "layout":
        layout_probe(run)
    elif args.stage == "colours":
        colour_probe(run)
    else:
        export(run, args.out or Path("linfusion_engine/builtin_models/shapes-sd15"), dtype=args.dtype)


if __name__ == "__main__":
    main()
