"""Conditioning for the engine: ControlNet, IP-Adapter, LoRA and init images (paintovers, inpainting).

Each module has one job and takes PIL images and loaded pipelines, never files from a job
record (that is `flows.conditioning_inputs`) and never Prefect, the database or S3:

- `inputs`: the request-side values (`ControlInput`, `IpAdapterInput`, `InitInput`, `LoraInput`),
  their checks, resizing to a stage's size, and the metadata record with image hashes;
- `controlnet`: loading ControlNets from the registry, and giving their own self-attention
  LinFusion's linear attention (upstream leaves it quadratic);
- `ip_adapter`: loading an IP-Adapter so that it and LinFusion both hold, whichever came first,
  and switching it on only for the renders that use it;
- `lora`: LoRA deltas applied to the live weights, LinFusion's own copies of attn1 included,
  with an exact undo;
- `pipelines`: which diffusers pipeline class a combination needs, built on the loaded one.

Heavy imports (torch, diffusers) stay inside functions of those modules, except where a module
is only imported at render time.
"""
