"""Every class of manifest error: its file, line, key path and message."""

from __future__ import annotations

import os
import textwrap

import pytest
from PIL import Image

from linstudio.settings import Settings, get_settings
from manifests import ManifestError, load_manifests

VALID = """\
version: 1
team: film
project: night-city
defaults:
  model: tiny-sd15
  steps: 4
  sizes: [64x64]
assets:
  - id: skyline
    prompt: neon skyline at dusk
    seeds: [1, 2]
"""


def write(folder, text, name="night-city.yaml"):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def png(path, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path)
    return path


def errors(tmp_path, text, settings=None):
    """(line, key path, message) of every error of one manifest."""
    result = load_manifests([write(tmp_path, text)], settings=settings or get_settings())
    return [(e.line, e.key_path, e.message) for e in result.errors]


def with_asset(extra: str) -> str:
    """VALID with lines added to its asset (indented like the asset's keys)."""
    return VALID + textwrap.indent(textwrap.dedent(extra), "    ")


def test_the_valid_manifest_is_valid(tmp_path):
    result = load_manifests([write(tmp_path, VALID)], settings=get_settings())
    assert result.errors == []
    assert [m.manifest.project for m in result.manifests] == ["night-city"]


def test_error_text_is_file_line_key_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "film", VALID.replace("sizes: [64x64]", "sizes: [64x60]"))
    (error,) = load_manifests([path], settings=get_settings()).errors
    assert str(error) == "film/night-city.yaml:7 defaults.sizes[0]: 64x60: height must be a multiple of 8, got 60"
    assert (error.path, error.line, error.key_path) == (path, 7, "defaults.sizes[0]")
    assert str(ManifestError(path, None, "", "no such file or folder")) == "film/night-city.yaml: no such file or folder"


# -- unknown keys ------------------------------------------------------------------------------------
def test_unknown_top_level_key_suggests_the_closest(tmp_path):
    assert errors(tmp_path, VALID.replace("defaults:", "defalts:")) == [
        (4, "defalts", "unknown key; did you mean 'defaults'?")]


def test_unknown_asset_key_suggests_the_closest(tmp_path):
    assert errors(tmp_path, with_asset("promt: rain\n")) == [(12, "assets[0].promt", "unknown key; did you mean 'prompt'?")]


def test_unknown_nested_key_suggests_from_that_mapping_only(tmp_path):
    path = png(tmp_path / "c.png")
    assert errors(tmp_path, with_asset(f"init_image: {{image: {path.name}, strenght: 0.4}}\n")) == [
        (12, "assets[0].init_image.strenght", "unknown key; did you mean 'strength'?")]


def test_asset_setting_at_top_level_says_where_it_belongs(tmp_path):
    assert errors(tmp_path, "steps: 4\n" + VALID) == [
        (1, "steps", "unknown key; 'steps' is an asset setting: put it under defaults: or an asset")]


def test_unknown_key_with_nothing_close_lists_the_valid_keys(tmp_path):
    assert errors(tmp_path, with_asset("init_image: {image: x.png, zzz: 1}\n"))[0] == (
        12, "assets[0].init_image.zzz", "unknown key (valid here: image, strength, mask)")


# -- required things --------------------------------------------------------------------------------
def test_missing_required_keys_point_at_the_enclosing_mapping(tmp_path):
    text = VALID.replace("team: film\n", "").replace("    prompt: neon skyline at dusk\n", "")
    assert errors(tmp_path, text) == [
        (1, "team", "required key 'team' is missing"),
        (8, "assets[0].prompt", "required key 'prompt' is missing")]


def test_manifest_without_assets(tmp_path):
    assert errors(tmp_path, VALID.split("assets:")[0] + "assets: []\n") == [(8, "assets", "must not be empty")]
    assert errors(tmp_path, VALID.split("assets:")[0]) == [(1, "assets", "required key 'assets' is missing")]


def test_empty_prompt(tmp_path):
    assert errors(tmp_path, VALID.replace("neon skyline at dusk", '"   "')) == [
        (10, "assets[0].prompt", "must not be empty")]


def test_model_and_sizes_must_come_from_the_asset_or_defaults(tmp_path):
    text = VALID.replace("  model: tiny-sd15\n", "").replace("  sizes: [64x64]\n", "")
    assert errors(tmp_path, text) == [
        (7, "assets[0]", "no model; give `model:` on the asset or in defaults"),
        (7, "assets[0]", "no sizes; give `sizes:` on the asset or in defaults")]


def test_document_that_is_not_a_mapping(tmp_path):
    assert errors(tmp_path, "- a\n- b\n") == [
        (1, "", "a manifest is a mapping (version:, team:, project:, assets:), not a list")]
    assert errors(tmp_path, "---\n") == [
        (None, "", "the file holds no YAML document; a manifest starts with `version: 1`")]
    assert errors(tmp_path, "null\n") == [
        (1, "", "a manifest is a mapping (version:, team:, project:, assets:), not empty")]


# -- choices and names ------------------------------------------------------------------------------
def test_version(tmp_path):
    assert errors(tmp_path, VALID.replace("version: 1", "version: 2")) == [
        (1, "version", "version 2 is not supported; this linstudio reads version 1")]


def test_team_is_one_of_four_with_a_suggestion(tmp_path):
    assert errors(tmp_path, VALID.replace("team: film", "team: flim")) == [
        (2, "team", "'flim' is not one of game, vr, film, ad; did you mean 'film'?")]


def test_project_and_asset_id_syntax(tmp_path):
    text = VALID.replace("project: night-city", "project: night city").replace("id: skyline", "id: sky/line")
    assert errors(tmp_path, text) == [
        (3, "project", "'night city' may contain only letters, digits, '-' and '_'"),
        (9, "assets[0].id", "'sky/line' may contain only letters, digits, '-' and '_'")]


def test_scheduler_and_attention_and_strategy_choices(tmp_path):
    found = errors(tmp_path, with_asset("scheduler: eulr\nattention: fast\nstrategy: tiled\n"))
    assert found[0] == (12, "assets[0].scheduler", "'eulr' is not one of euler, euler_a, ddim, dpmpp_2m, "
                        "dpmpp_2m_karras, pndm, lms, heun, unipc; did you mean 'euler'?")
    assert found[1] == (13, "assets[0].attention", "'fast' is not one of auto, linear, softmax")
    assert found[2] == (14, "assets[0].strategy", "'tiled' is not one of auto, direct, sdedit, highres")


def test_unknown_model_lists_the_registry_and_suggests(tmp_path):
    assert errors(tmp_path, with_asset("model: sd16\n")) == [
        (12, "assets[0].model",
         "unknown model 'sd16'; registered: sd15, sd21, sdxl, shapes-sd15, tiny-sd15, tiny-sdxl; did you mean 'sd15'?")]


def test_unknown_model_in_defaults_is_one_error_for_all_assets(tmp_path):
    text = VALID.replace("model: tiny-sd15", "model: sdx") + "  - id: two\n    prompt: second\n"
    assert [(line, key) for line, key, _ in errors(tmp_path, text)] == [(5, "defaults.model")]


def test_unknown_lora_of_the_model(tmp_path):
    assert errors(tmp_path, with_asset("lora: {name: studio-style, scale: 0.7}\n")) == [
        (12, "assets[0].lora[0].name", "LoRA 'studio-style' is not registered with model 'tiny-sd15'; did you mean 'tiny-style'? (its LoRAs: tiny-style)")]


def test_tileable_values(tmp_path):
    assert errors(tmp_path, with_asset("tileable: xy\n")) == [
        (12, "assets[0].tileable", "must be false, true, x or y (got 'xy')")]
    assert errors(tmp_path, with_asset("tileable: 1\n")) == [
        (12, "assets[0].tileable", "must be false, true, x or y (got 1)")]


# -- sizes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, message", [
    ("1000x1004", "1000x1004: height must be a multiple of 8, got 1004"),
    ("20000x8", "20000x8: width must be at most 16384, got 20000"),
    ("0x64", "0x64: width must be positive, got 0"),
    ("1024", "1024 is not a size; write WIDTHxHEIGHT, e.g. 1024x1024"),
    ("big", "'big' is not a size; write WIDTHxHEIGHT, e.g. 1024x1024"),
    ("-64x64", "'-64x64' is not a size; write WIDTHxHEIGHT, e.g. 1024x1024"),
])
def test_sizes(tmp_path, size, message):
    assert errors(tmp_path, with_asset(f"sizes: [64x64, {size}]\n")) == [(12, "assets[0].sizes[1]", message)]


def test_largest_size_is_accepted(tmp_path):
    assert errors(tmp_path, with_asset("sizes: [16384x8192, 16384x16384, 8x8]\n")) == []


def test_duplicate_sizes_and_seeds(tmp_path):
    text = VALID.replace("seeds: [1, 2]", "seeds: [1, 2, 1]") + "    sizes:\n      - 64x64\n      - 64x64\n"
    assert errors(tmp_path, text) == [
        (11, "assets[0].seeds[2]", "seed 1 is listed twice"),
        (14, "assets[0].sizes[1]", "size 64x64 is listed twice")]


# -- ranges ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("line, key, message", [
    ("steps: 0", "assets[0].steps", "must be at least 1, got 0"),
    ("steps: 201", "assets[0].steps", "must be at most 200, got 201"),
    ("guidance: -1", "assets[0].guidance", "must be at least 0, got -1"),
    ("guidance: 31.5", "assets[0].guidance", "must be at most 30, got 31.5"),
    ("guidance: .nan", "assets[0].guidance", "must be a finite number, got nan"),
])
def test_number_ranges(tmp_path, line, key, message):
    assert errors(tmp_path, with_asset(line + "\n")) == [(12, key, message)]


def test_seed_and_variant_ranges(tmp_path):
    assert errors(tmp_path, VALID.replace("seeds: [1, 2]", "seeds: [-1, 4294967296]")) == [
        (11, "assets[0].seeds[0]", "must be at least 0, got -1"),
        (11, "assets[0].seeds[1]", "must be at most 4294967295, got 4294967296")]
    assert errors(tmp_path, VALID.replace("seeds: [1, 2]", "variants: 65")) == [
        (11, "assets[0].variants", "must be at most 64, got 65")]
    assert errors(tmp_path, VALID.replace("seeds: [1, 2]", "variants: 0")) == [
        (11, "assets[0].variants", "must be at least 1, got 0")]


def test_seeds_and_variants_together(tmp_path):
    assert errors(tmp_path, with_asset("variants: 3\n")) == [(12, "assets[0].variants", "give seeds or variants, not both")]


def test_scales_and_strengths(tmp_path):
    png(tmp_path / "c.png")
    found = errors(tmp_path, with_asset(
        "controlnet: {type: canny, image: c.png, scale: 2.5}\n"
        "ip_adapter: {images: [c.png], scale: -0.1}\n"
        "init_image: {image: c.png, strength: 0}\n"
        "lora: [{name: x, scale: 3}]\n"))
    assert found == [
        (12, "assets[0].controlnet[0].scale", "must be at most 2, got 2.5"),
        (13, "assets[0].ip_adapter.scale", "must be at least 0, got -0.1"),
        (14, "assets[0].init_image.strength", "must be more than 0, got 0"),
        (15, "assets[0].lora[0].scale", "must be at most 2, got 3")]
    assert errors(tmp_path, with_asset("init_image: {image: c.png, strength: 1.5}\n")) == [
        (12, "assets[0].init_image.strength", "must be at most 1, got 1.5")]


def test_jobs_per_manifest_limit_names_the_count(tmp_path):
    settings = Settings(max_jobs_per_manifest=10)
    text = VALID.replace("seeds: [1, 2]", "variants: 4") + "    sizes: [64x64, 128x64, 64x128]\n"
    assert errors(tmp_path, text, settings) == [
        (8, "assets", "the manifest expands to 12 render jobs; the limit is 10 (LINSTUDIO_MAX_JOBS_PER_MANIFEST): "
                      "split it or raise the limit")]
    assert errors(tmp_path, text.replace("variants: 4", "variants: 3"), settings) == []


# -- types --------------------------------------------------------------------------------------------
def test_strict_types(tmp_path):
    found = errors(tmp_path, with_asset('steps: "30"\nguidance: true\ntags: environment\n'))
    assert found == [
        (12, "assets[0].steps", "expected a whole number, got '30'"),
        (13, "assets[0].guidance", "expected a number, got true"),
        (14, "assets[0].tags", "expected a list, got 'environment'")]


def test_numbers_where_text_is_expected_say_to_quote(tmp_path):
    assert errors(tmp_path, VALID.replace("id: skyline", "id: 2024")) == [
        (9, "assets[0].id", "expected text, got 2024; quote it")]


def test_asset_that_is_not_a_mapping(tmp_path):
    assert errors(tmp_path, VALID + "  - just a prompt\n") == [
        (12, "assets[1]", "expected a mapping (key: value lines), got 'just a prompt'")]


def test_controlnet_as_a_single_mapping_reports_the_right_line(tmp_path):
    found = errors(tmp_path, with_asset("controlnet:\n  type: canny\n  image: c.png\n  scale: 9\n"))
    assert found == [(15, "assets[0].controlnet[0].scale", "must be at most 2, got 9")]


# -- files ---------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    assert errors(tmp_path, with_asset("controlnet: [{type: canny, image: controls/x.png}]\n")) == [
        (12, "assets[0].controlnet[0].image", "file not found: controls/x.png")]


def test_file_that_is_not_an_image(tmp_path):
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "notes.txt").write_text("mood: dark")
    (tmp_path / "refs" / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    found = errors(tmp_path, with_asset("ip_adapter: {images: [refs/notes.txt, refs/fake.png, refs]}\n"))
    assert found == [
        (12, "assets[0].ip_adapter.images[0]", "not an image (PNG/JPEG/WebP/TIFF expected): refs/notes.txt"),
        (12, "assets[0].ip_adapter.images[1]", "not an image (PNG/JPEG/WebP/TIFF expected): refs/fake.png"),
        (12, "assets[0].ip_adapter.images[2]", "not a file: refs")]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_accepted_image_formats(tmp_path, fmt):
    Image.new("RGB", (16, 16)).save(tmp_path / f"ref.{fmt.lower()}", format=fmt)
    assert errors(tmp_path, with_asset(f"ip_adapter: {{images: [ref.{fmt.lower()}]}}\n")) == []


def test_gif_is_refused(tmp_path):
    Image.new("P", (16, 16)).save(tmp_path / "ref.gif")
    assert errors(tmp_path, with_asset("ip_adapter: {images: [ref.gif]}\n")) == [
        (12, "assets[0].ip_adapter.images[0]", "not an image (PNG/JPEG/WebP/TIFF expected): ref.gif")]


def test_escaping_the_manifest_folder_is_refused(tmp_path):
    png(tmp_path / "outside.png")
    folder = tmp_path / "film"
    manifest = write(folder, with_asset("init_image: {image: ../outside.png, mask: a/../../outside.png}\n"))
    result = load_manifests([manifest], settings=get_settings())
    hint = "leaves the manifest folder; use a path inside it or under a shared root (LINSTUDIO_SHARED_ROOTS)"
    assert [(e.line, e.key_path, e.message) for e in result.errors] == [
        (12, "assets[0].init_image.image", f"'../outside.png' {hint}"),
        (12, "assets[0].init_image.mask", f"'a/../../outside.png' {hint}")]


def test_relative_path_that_stays_inside_is_fine(tmp_path):
    png(tmp_path / "controls" / "c.png")
    assert errors(tmp_path, with_asset("controlnet: {type: depth, image: controls/../controls/./c.png}\n")) == []


def test_absolute_paths_only_under_shared_roots(tmp_path):
    nas = tmp_path / "nas"
    inside = png(nas / "controls" / "c.png")
    elsewhere = png(tmp_path / "private" / "c.png")
    manifest_dir = tmp_path / "film"
    text = with_asset(f"ip_adapter: {{images: ['{inside}', '{elsewhere}', '{nas}/../private/c.png']}}\n")
    path = write(manifest_dir, text)
    refused = load_manifests([path], settings=Settings(shared_roots=[nas])).errors
    assert [(e.key_path, e.message) for e in refused] == [
        ("assets[0].ip_adapter.images[1]", f"'{elsewhere}' is not under a shared root (LINSTUDIO_SHARED_ROOTS: {nas}); "
                                           "use a path relative to the manifest's folder, or allow-list the folder"),
        ("assets[0].ip_adapter.images[2]", f"'{nas}/../private/c.png' is not under a shared root "
                                           f"(LINSTUDIO_SHARED_ROOTS: {nas}); use a path relative to the manifest's "
                                           "folder, or allow-list the folder")]
    no_roots = load_manifests([path], settings=Settings(shared_roots=[])).errors
    assert "(LINSTUDIO_SHARED_ROOTS: none set)" in no_roots[0].message


def test_links_leading_out_are_refused(tmp_path):
    secret = png(tmp_path / "secret" / "s.png")
    folder = tmp_path / "film"
    folder.mkdir()
    (folder / "link.png").symlink_to(secret)
    secret = os.path.realpath(secret)
    manifest = write(folder, with_asset("ip_adapter: {images: [link.png]}\n"))
    found = load_manifests([manifest], settings=get_settings()).errors
    assert [(e.key_path, e.message) for e in found] == [
        ("assets[0].ip_adapter.images[0]", f"'link.png' is a link that leads outside the manifest folder ({secret}); "
                                           "use a path inside it or under a shared root (LINSTUDIO_SHARED_ROOTS)")]


def test_s3_uris_are_accepted_by_shape_and_other_urls_refused(tmp_path):
    found = errors(tmp_path, with_asset(
        "ip_adapter: {images: ['s3://studio-refs/moods/1.png', 's3://B/x.png', 'https://x.test/y.png']}\n"))
    assert found == [
        (12, "assets[0].ip_adapter.images[1]", "'s3://B/x.png' is not an S3 URI of the form s3://bucket/key"),
        (12, "assets[0].ip_adapter.images[2]", "'https://x.test/y.png': only paths and s3:// URIs are allowed")]


# -- every error, every file -------------------------------------------------------------------------
def test_all_errors_of_all_files_in_one_run(tmp_path):
    png(tmp_path / "b" / "ok.png")
    one = write(tmp_path / "a", VALID.replace("team: film", "team: films").replace("steps: 4", "steps: 0"))
    two = write(tmp_path / "b", with_asset("sizes: [64x63]\ncontrolnet: {type: canny, image: missing.png}\n"), "two.yaml")
    fine = write(tmp_path / "c", VALID, "fine.yml")
    result = load_manifests([tmp_path], settings=get_settings())
    assert [(e.path.name, e.line, e.key_path) for e in result.errors] == [
        ("night-city.yaml", 2, "team"), ("night-city.yaml", 6, "defaults.steps"),
        ("two.yaml", 12, "assets[0].sizes[0]"), ("two.yaml", 13, "assets[0].controlnet[0].image")]
    assert result.files == [one, two, fine]
    assert [m.path for m in result.manifests] == [fine]
    assert result.invalid_files == [one, two]


def test_a_bad_value_does_not_hide_other_assets_problems(tmp_path):
    text = VALID.replace("sizes: [64x64]", "sizes: [64x65]") + (
        "  - id: second\n"
        "    prompt: two\n"
        "    model: tiny-sd16\n"
        "    controlnet: {type: canny, image: nope.png}\n"
        "  - id: skyline\n"
        "    prompt: three\n")
    keys = [key for _, key, _ in errors(tmp_path, text)]
    assert keys == ["defaults.sizes[0]", "assets[1].model", "assets[1].controlnet[0].image", "assets[2].id"]


def test_duplicate_asset_ids(tmp_path):
    text = VALID + "  - id: skyline\n    prompt: again\n"
    assert errors(tmp_path, text) == [(12, "assets[1].id", "duplicate asset id 'skyline' (also assets[0].id)")]


def test_yaml_problems_come_with_file_and_line(tmp_path):
    assert errors(tmp_path, VALID + "team: game\n") == [(12, "team", "duplicate key (first written at line 2)")]


def test_paths_that_are_not_manifests(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "hidden" / ".git").mkdir(parents=True)
    write(tmp_path / "hidden" / ".git", VALID, "config.yaml")
    result = load_manifests([tmp_path / "nope.yaml", tmp_path / "empty", tmp_path / "hidden"], settings=get_settings())
    assert [(e.path.name, e.message) for e in result.errors] == [
        ("nope.yaml", "no such file or folder"),
        ("empty", "no manifests (*.yaml, *.yml) in this folder"),
        ("hidden", "no manifests (*.yaml, *.yml) in this folder")]


def test_broken_model_registry_is_reported_not_raised(tmp_path, isolated_home):
    isolated_home.mkdir(parents=True)
    (isolated_home / "models.yaml").write_text("models: [oops]\n")
    result = load_manifests([write(tmp_path, VALID)], settings=get_settings())
    assert [e.message for e in result.errors] == ["model registry: expected a mapping under 'models:'"]
