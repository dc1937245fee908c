"""Distil LinFusion layers for a studio's own base model (the published objective, section 4 of the method).

- `data`: images with caption sidecars or a JSONL, read in a seed-and-step-determined order;
- `setup`: the base pipeline, the student (LinFusion mounted) and the frozen softmax teacher;
- `loss`: the published loss, with attn1 outputs captured by hooks on both UNets;
- `checkpoints`, `train`: the accelerate training loop, checkpoints and exact resume;
- `evaluate`: student against teacher on a prompt set (per-layer attention and image error).

Import the submodules directly; this package imports nothing heavy by itself.
"""
