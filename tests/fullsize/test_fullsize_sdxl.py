"""SD-XL at full size as one original-layout file: `models add`, then `linstudio run`, on the CPU.

SD-XL base is ~3.5 B parameters: 6.9 GB as an fp16 file, ~14 GB in fp32. This machine has 24 GB,
so the render runs in bfloat16 (`LINSTUDIO_DTYPE=bfloat16`, ~7 GB) at 256 px, 2 steps. Marked
`heavy`: left out of `make test` (its time budget), run by `make test-heavy`, which .ci/run runs too.
"""

from __future__ import annotations

import pytest

import model_files
from test_fullsize_models import _render_and_read, file_sha256, linstudio, studio_env  # noqa: F401  (fixture)

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.fullsize, pytest.mark.heavy]


@pytest.fixture(scope="module")
def sdxl_file(tmp_path_factory):
    path = model_files.write_single_file(tmp_path_factory.mktemp("xl") / "house_style_xl.safetensors", "sdxl")
    yield path
    path.unlink(missing_ok=True)


def test_an_sdxl_single_file_renders_with_two_commands(studio_env, sdxl_file, tmp_path):
    env = {**studio_env, "LINSTUDIO_DTYPE": "bfloat16"}
    added = linstudio(env, "models", "add", "house-xl", "--base", str(sdxl_file))
    assert added.returncode == 0, added.stderr
    assert "registered 'house-xl' (sdxl, single file)" in added.stdout
    renders = _render_and_read(env, tmp_path / "manifests", "house-xl", side=256)
    sha = file_sha256(sdxl_file)
    for render in renders.values():
        meta = render["engine"]
        assert meta["family"] == "sdxl" and meta["base_format"] == "single file"
        assert meta["weights"] == {"base": sha} and meta["dtype"] == "bfloat16"
    assert renders["chateau-linear"]["engine"]["attention"] == "linear"
    assert renders["chateau-linear"]["engine"]["prompt_truncated"]["prompt"]["kept"] == 75
