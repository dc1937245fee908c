"""Job expansion, job keys (what changes them and what must not), and the features a job uses."""

from __future__ import annotations

import hashlib
import json
import shutil
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from linfusion_engine.capabilities import features_used
from linfusion_engine.registry import ModelEntry, ModelRegistry
from manifests import KEY_FIELDS, expand_jobs, job_key, load_manifests
from manifests.schema import derive_seeds
from linstudio.settings import get_settings

REPO = Path(__file__).resolve().parents[2]

BASE = """\
version: 1
team: film
project: night-city
defaults:
  model: studio-sd15
  steps: 4
  guidance: 7.5
  scheduler: euler
  attention: auto
  negative_prompt: blurry
  sizes: [64x64]
assets:
  - id: skyline
    prompt: neon skyline at dusk
    seeds: [1]
    sizes: [128x64]
    strategy: auto
    tags: [environment]
    controlnet: [{type: canny, image: controls/edges.png, scale: 0.8}]
    ip_adapter: {images: [refs/mood.png], scale: 0.6}
    init_image: {image: paint/over.png, strength: 0.5, mask: paint/mask.png}
    lora: {name: studio-style, scale: 0.7}
    tileable: false
"""


def image(path: Path, colour=(10, 20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    """A registry with two studio models whose weights and LoRA are small local files."""
    (tmp_path / "weights").mkdir()
    lora = tmp_path / "weights" / "style.safetensors"
    lora.write_bytes(b"lora weights v1")
    reg = ModelRegistry(tmp_path / "home" / "models.yaml", tmp_path / "home" / "models")
    for name in ("studio-sd15", "studio-sd15-alt"):
        weights = tmp_path / "weights" / name
        (weights / "unet").mkdir(parents=True)
        (weights / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(f"{name} unet v1".encode())
        reg.add(ModelEntry(name, "sd15", str(weights), "from_unet", 512, loras={"studio-style": str(lora)}))
    return reg


@pytest.fixture
def project(tmp_path) -> Path:
    """A manifest folder with its conditioning inputs."""
    folder = tmp_path / "project"
    image(folder / "controls" / "edges.png")
    image(folder / "refs" / "mood.png", (200, 100, 50))
    image(folder / "paint" / "over.png", (90, 90, 160))
    image(folder / "paint" / "mask.png", (255, 255, 255))
    (folder / "night-city.yaml").write_text(BASE)
    return folder


def keys(folder: Path, registry, text: str | None = None) -> list[str]:
    path = folder / "night-city.yaml"
    if text is not None:
        path.write_text(text)
    result = load_manifests([path], registry=registry, settings=get_settings())
    assert result.errors == [], [str(e) for e in result.errors]
    return [job.key for job in expand_jobs(result.manifests[0], registry)]


# -- expansion ---------------------------------------------------------------------------------------
def test_one_job_per_asset_size_seed_in_order(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        team: ad
        project: spring
        defaults: {model: tiny-sd15, sizes: [64x64, 128x64]}
        assets:
          - {id: a, prompt: one, seeds: [5, 6]}
          - {id: b, prompt: two, variants: 3, sizes: [64x128]}
        """))
    loaded = load_manifests([path], settings=get_settings()).manifests[0]
    jobs = expand_jobs(loaded)
    assert [(j.asset_id, j.width, j.height, j.seed) for j in jobs] == [
        ("a", 64, 64, 5), ("a", 64, 64, 6), ("a", 128, 64, 5), ("a", 128, 64, 6),
        ("b", 64, 128, derive_seeds("b", 3)[0]), ("b", 64, 128, derive_seeds("b", 3)[1]),
        ("b", 64, 128, derive_seeds("b", 3)[2])]
    assert len({j.key for j in jobs}) == 7
    assert all(len(j.key) == 64 and int(j.key, 16) >= 0 for j in jobs)
    assert [j.manifest_line for j in jobs] == [6] * 4 + [7] * 3
    assert jobs[0].steps == 30 and jobs[0].scheduler == "euler" and jobs[0].guidance == 7.5  # built-in defaults
    assert jobs[0].manifest_path == str(path)


def test_variant_seeds_are_the_documented_derivation():
    expected = [int.from_bytes(hashlib.sha256(f"alley-rain:{i}".encode()).digest()[:4], "big") for i in range(4)]
    assert list(derive_seeds("alley-rain", 4)) == expected
    assert derive_seeds("alley-rain", 2) == derive_seeds("alley-rain", 4)[:2]  # more variants keep the first ones
    assert len(set(expected)) == 4 and all(0 <= s < 2**32 for s in expected)


def test_seeds_in_defaults_and_asset_override(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nteam: ad\nproject: p\ndefaults: {model: tiny-sd15, sizes: [64x64], seeds: [42]}\n"
                    "assets:\n  - {id: a, prompt: one}\n  - {id: b, prompt: two, variants: 2}\n")
    jobs = expand_jobs(load_manifests([path], settings=get_settings()).manifests[0])
    assert [j.seed for j in jobs] == [42, *derive_seeds("b", 2)]


def test_record_is_json_with_every_field(project, registry):
    loaded = load_manifests([project / "night-city.yaml"], registry=registry, settings=get_settings()).manifests[0]
    (job,) = expand_jobs(loaded, registry)
    record = json.loads(json.dumps(job.to_record()))
    assert set(record) == {"key", "team", "project", "asset_id", "prompt", "negative_prompt", "seed", "width",
                           "height", "model", "model_identity", "steps", "guidance", "scheduler", "attention",
                           "strategy", "tileable", "tags", "conditioning", "parent_render_id", "manifest_path",
                           "manifest_line", "spec_version", "schedule", "projection"}
    assert record["tags"] == ["environment"]
    edges = record["conditioning"]["controlnet"][0]["image"]
    assert edges == {"path": str(project / "controls" / "edges.png"), "hashed": "bytes",
                     "sha256": hashlib.sha256((project / "controls" / "edges.png").read_bytes()).hexdigest()}
    assert record["conditioning"]["lora"] == [{"name": "studio-style", "scale": 0.7}]
    assert record["conditioning"]["init_image"]["strength"] == 0.5
    assert _features(job) == ["controlnet", "ip_adapter", "init_image", "lora"]
    assert hash(job) == hash(job.key)


def test_s3_inputs_hash_their_uri(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nteam: vr\nproject: p\ndefaults: {model: tiny-sd15, sizes: [64x64]}\nassets:\n"
                    "  - {id: a, prompt: x, ip_adapter: {images: ['s3://refs-bucket/mood/1.png']}}\n")
    (job,) = expand_jobs(load_manifests([path], settings=get_settings()).manifests[0])
    ref = job.conditioning["ip_adapter"]["images"][0]
    assert ref == {"path": "s3://refs-bucket/mood/1.png", "hashed": "uri",
                   "sha256": hashlib.sha256(b"s3://refs-bucket/mood/1.png").hexdigest()}


# -- keys: stable ------------------------------------------------------------------------------------
def test_same_manifest_same_keys(project, registry):
    assert keys(project, registry) == keys(project, registry)


def test_job_key_is_pinned():
    """The canonical form must not drift: a change here re-renders every catalogue. Bump JOB_KEY_VERSION."""
    fields = {"team": "film", "project": "p", "asset_id": "a", "prompt": "x", "negative_prompt": "", "seed": 1,
              "width": 64, "height": 64, "model_identity": "0123456789abcdef", "steps": 4, "guidance": 7.5,
              "scheduler": "euler", "attention": "auto", "strategy": "auto", "conditioning": {}, "tileable": False}
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    assert job_key(fields) == hashlib.sha256(f"linstudio-job-v1\n{body}".encode()).hexdigest()
    assert job_key(fields) == "5ddc38b3b4e98b18ab9ff866947fc7a9cd0505bb8f68e28d764146bde81537fe"


@pytest.mark.parametrize("edit", [
    pytest.param(lambda t: t.replace("tags: [environment]", "tags: [environment, key-art, v2]"), id="tags"),
    pytest.param(lambda t: t.replace("version: 1\n", "# night city key art\nversion: 1\n"), id="comment"),
    pytest.param(lambda t: t.replace("steps: 4\n  guidance: 7.5\n", "guidance: 7.50\n  steps: 4\n"), id="key-order"),
    pytest.param(lambda t: t.replace("  steps: 4\n", "") .replace("    seeds: [1]\n", "    seeds: [1]\n    steps: 4\n"),
                 id="same-value-from-asset"),
    pytest.param(lambda t: t.replace("  scheduler: euler\n", ""), id="builtin-default-equals-written"),
    pytest.param(lambda t: t.replace("prompt: neon skyline at dusk", "prompt: '  neon skyline at dusk  '"),
                 id="surrounding-spaces"),
    pytest.param(lambda t: t.replace("lora: {name: studio-style, scale: 0.7}", "lora: [{name: studio-style, scale: 0.7}]"),
                 id="one-or-list"),
])
def test_excluded_changes_keep_keys(project, registry, edit):
    before = keys(project, registry)
    assert keys(project, registry, edit(BASE)) == before


def test_moving_the_manifest_and_its_inputs_keeps_keys(project, registry, tmp_path):
    before = keys(project, registry)
    moved = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(project, moved)
    assert keys(moved, registry) == before


def test_engine_version_and_device_are_not_in_keys(project, registry, monkeypatch):
    import linfusion_engine
    import linstudio

    before = keys(project, registry)
    monkeypatch.setattr(linfusion_engine, "__version__", "99.0")
    monkeypatch.setattr(linstudio, "__version__", "99.0")
    monkeypatch.setenv("LINSTUDIO_DEVICE", "cuda:7")
    assert keys(project, registry) == before
    assert not {"engine_version", "device", "duration", "tags", "manifest_path"} & set(KEY_FIELDS)


# -- keys: every key field matters ------------------------------------------------------------------
@pytest.mark.parametrize("old, new", [
    ("team: film", "team: ad"),
    ("project: night-city", "project: day-city"),
    ("id: skyline", "id: skyline-2"),
    ("prompt: neon skyline at dusk", "prompt: neon skyline at dawn"),
    ("negative_prompt: blurry", "negative_prompt: blurry, text"),
    ("seeds: [1]", "seeds: [2]"),
    ("sizes: [128x64]", "sizes: [136x64]"),
    ("sizes: [128x64]", "sizes: [128x72]"),
    ("steps: 4", "steps: 5"),
    ("guidance: 7.5", "guidance: 7.0"),
    ("scheduler: euler", "scheduler: ddim"),
    ("attention: auto", "attention: linear"),
    ("strategy: auto", "strategy: direct"),
    ("scale: 0.8", "scale: 0.9"),
    ("type: canny", "type: depth"),
    ("images: [refs/mood.png], scale: 0.6", "images: [refs/mood.png], scale: 0.5"),
    ("images: [refs/mood.png]", "images: [refs/mood.png, refs/mood.png]"),
    ("strength: 0.5", "strength: 0.6"),
    ("mask: paint/mask.png", "mask: paint/over.png"),
    ("lora: {name: studio-style, scale: 0.7}", "lora: {name: studio-style, scale: 0.8}"),
    ("tileable: false", "tileable: x"),
    ("model: studio-sd15", "model: studio-sd15-alt"),
])
def test_each_key_field_changes_the_key(project, registry, old, new):
    before = keys(project, registry)
    assert old in BASE
    assert keys(project, registry, BASE.replace(old, new, 1)) != before


@pytest.mark.parametrize("name", ["controls/edges.png", "refs/mood.png", "paint/over.png", "paint/mask.png"])
def test_conditioning_file_content_changes_the_key(project, registry, name):
    before = keys(project, registry)
    image(project / name, (1, 2, 3))
    assert keys(project, registry) != before


def test_model_weights_change_the_key(project, registry, tmp_path):
    before = keys(project, registry)
    unet = tmp_path / "weights" / "studio-sd15" / "unet" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(b"unet weights v2, retrained")
    assert keys(project, registry) != before


def test_lora_weights_change_the_key(project, registry, tmp_path):
    before = keys(project, registry)
    (tmp_path / "weights" / "style.safetensors").write_bytes(b"lora weights v2, retrained")
    assert keys(project, registry) != before


@pytest.mark.parametrize("field", KEY_FIELDS)
def test_job_key_covers_every_field(project, registry, field):
    loaded = load_manifests([project / "night-city.yaml"], registry=registry, settings=get_settings()).manifests[0]
    (job,) = expand_jobs(loaded, registry)
    fields = job.key_fields()
    assert job_key(fields) == job.key
    changed = dict(fields, **{field: {"changed": True}})
    assert job_key(changed) != job.key


def test_job_key_ignores_conditioning_paths_but_not_hashes(project, registry):
    loaded = load_manifests([project / "night-city.yaml"], registry=registry, settings=get_settings()).manifests[0]
    (job,) = expand_jobs(loaded, registry)
    fields = json.loads(json.dumps(job.key_fields()))
    fields["conditioning"]["controlnet"][0]["image"]["path"] = "/somewhere/else.png"
    assert job_key(fields) == job.key
    fields["conditioning"]["controlnet"][0]["image"]["sha256"] = "0" * 64
    assert job_key(fields) != job.key


def test_job_key_refuses_missing_and_extra_fields():
    fields = {name: 1 for name in KEY_FIELDS}
    fields["conditioning"] = {}
    job_key(fields)
    with pytest.raises(ValueError, match=r"missing fields \['seed'\], unexpected fields \['device'\]"):
        job_key({**{k: v for k, v in fields.items() if k != "seed"}, "device": "cuda"})


def test_re_renders_fold_the_parent_into_the_key(project, registry):
    loaded = load_manifests([project / "night-city.yaml"], registry=registry, settings=get_settings()).manifests[0]
    (job,) = expand_jobs(loaded, registry)
    assert job_key({**job.key_fields(), "parent_render_id": None}) == job.key
    upscaled = job.derived("render-123", width=1024, height=512)
    assert upscaled.parent_render_id == "render-123"
    assert upscaled.key == job_key(upscaled.key_fields()) != job.key
    assert job.derived("render-123", width=1024, height=512).key == upscaled.key
    assert job.derived("render-456", width=1024, height=512).key != upscaled.key


# -- features a job uses (linfusion_engine.capabilities names them) ------------------------------
def _features(job) -> list[str]:
    return features_used(job.conditioning, job.tileable, job.strategy)


def test_features_of_strategy_and_tileable(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nteam: game\nproject: p\ndefaults: {model: tiny-sd15, sizes: [64x64], tileable: true}\n"
                    "assets:\n  - {id: a, prompt: x, strategy: highres, model: tiny-sdxl}\n  - {id: b, prompt: y, strategy: direct,"
                    " tileable: false}\n  - {id: c, prompt: z, tileable: y}\n")
    jobs = expand_jobs(load_manifests([path], settings=get_settings()).manifests[0])
    assert [_features(j) for j in jobs] == [["tileable", "strategy:highres"], [], ["tileable"]]


def test_conditioning_examples_validate_and_list_their_features():
    """Whatever the schema accepts the engine supports: the conditioning examples are valid as they are."""
    folder = REPO / "manifests" / "examples-conditioning"
    result = load_manifests([folder], settings=get_settings())
    assert result.errors == []
    used = {f for loaded in result.manifests for job in expand_jobs(loaded) for f in _features(job)}
    assert used >= {"controlnet", "ip_adapter", "init_image", "tileable"}


def test_examples_run_today_and_stay_small():
    result = load_manifests([REPO / "manifests" / "examples"], settings=get_settings())
    assert result.errors == []
    assert sorted(m.manifest.team for m in result.manifests) == ["ad", "film", "game", "game", "vr"]
    jobs = [job for loaded in result.manifests for job in expand_jobs(loaded)]
    assert 15 <= len(jobs) <= 24
    assert all(_features(j) in ([], ["tileable"]) for j in jobs)
    assert {j.model for j in jobs} == {"tiny-sd15", "tiny-sdxl", "shapes-sd15"}
    tiny = [j for j in jobs if j.model != "shapes-sd15"]
    assert all(j.steps <= 4 and 64 <= j.width <= 256 and 64 <= j.height <= 256 for j in tiny)
    # the trained model's renders are judged by eye in the gallery: few, small, at most 20 steps
    shapes = [j for j in jobs if j.model == "shapes-sd15"]
    assert 4 <= len(shapes) <= 8
    assert all(j.steps <= 20 and j.width * j.height <= 256 * 256 for j in shapes)
