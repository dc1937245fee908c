"""Tools for developing and testing the engine, kept out of the engine itself.

- `tiny`, `tiny_conditioning`: the deterministic random-weight `tiny-sd15` / `tiny-sdxl` models and
  their ControlNets, IP-Adapter and LoRA, which the demo, the tests and CI render with;
- `builtin_models`: the object the engine finds through the `linfusion_engine.builtin_models` entry point
  (pyproject.toml) to build those `builtin:` registry locations on first use;
- `distill`: the `linstudio distill` trainer of LinFusion layers for a studio's own base model.

The devkit stands on the engine (`linfusion_engine`); the engine never imports it. A render worker
loads it only through the entry point, and only when a `builtin:` model has to be built.
"""
