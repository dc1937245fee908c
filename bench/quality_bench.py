"""Quality bench: what `shapes-sd15` draws, read back by the shapes world's analyzer.

Every case renders the same held-out prompts (seeds from `toy.train_shapes.EVAL_SEED_START`
on, never used in training) through the product's own engine, and the analyzer reads each image:
object colour, shape, position, background colour, all four together, and whether exactly one
object was drawn. The same table is made for the trained LinFusion weights and for the untrained
`from_unet` start, so a studio sees what distillation buys. Also: LinFusion against softmax at
128 px (mean absolute pixel difference, same seed), the wrap seam of a tileable render, and
seconds per image. The conditioned cases (`CONDITIONED_CASES`) measure the model's built-in
ControlNet (`seg`) and IP-Adapter: whether the map's geometry and the reference's colours win
over a prompt that says otherwise, and that at scale 0 they stop steering.

    .venv/bin/python bench/quality_bench.py [--prompts 200] [--big-prompts 20] [--steps 20]
        [--cases NAME,...] [--resume] [--no-write]

Results go to docs/quality.json case by case (`--resume` skips finished cases, so a long
run survives an interruption) and, at the end, between the `<!-- bench:quality -->` markers of
docs/quality.md. Figures are reported, not asserted: a thresholded test would make CI flaky.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a plain script from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdocs import update_section  # noqa: E402
from toy.analyzer import analyze, matches  # noqa: E402
from toy.shapes import control_map, draw, jittered, other_geometry, scene_from_seed  # noqa: E402
from toy.train_shapes import EVAL_SEED_START  # noqa: E402

DOC = REPO / "docs" / "quality.md"
RESULTS = REPO / "docs" / "quality.json"  # committed: a later --resume run adds cases to the record
MODEL = "shapes-sd15"
UNTRAINED = "shapes-sd15-from-unet"  # the same base with LinFusion built from its own attention
ATTRIBUTES = ("color", "shape", "position", "background")


@dataclass(frozen=True)
class Case:
    """One row of the table: a size, a strategy and an attention mode on one model."""

    name: str
    width: int
    height: int
    strategy: str
    attention: str
    model: str = MODEL
    big: bool = False  # renders only --big-prompts prompts (the 2048 px case)
    tileable: str | bool = False
    goal: str = ""
    conditioning: str = ""  # `control` (a seg map), `ip` (a reference image) or `control+ip`
    scale: float = 1.0  # the conditioning's scale


# In the order they run: the goals first, then the untrained start, then the cross-resolution
# report. `auto` renders directly up to twice the native area (128 px here: 256x256 and above run
# the SDEdit chain), so the cross-resolution experiment has its own `direct` rows.
CASES: tuple[Case, ...] = (
    Case("128-direct-softmax", 128, 128, "direct", "softmax", goal=">= 85%"),
    Case("128-direct-linear", 128, 128, "direct", "linear", goal=">= 80%, within 5 points of softmax"),
    Case("256-auto-linear", 256, 256, "auto", "linear", goal=">= 75%"),
    Case("512-auto-linear", 512, 512, "auto", "linear", goal=">= 70%, single object >= 90%"),
    Case("2048-auto-linear", 2048, 2048, "auto", "linear", big=True, goal=">= 60% on >= 20 prompts"),
    Case("256x128-tileable-x-linear", 256, 128, "direct", "linear", tileable="x", goal="seam vs column step"),
    # The untrained start, for what distillation buys.
    Case("128-direct-linear-untrained", 128, 128, "direct", "linear", model=UNTRAINED),
    Case("256-auto-linear-untrained", 256, 256, "auto", "linear", model=UNTRAINED),
    Case("512-auto-linear-untrained", 512, 512, "auto", "linear", model=UNTRAINED),
    Case("2048-auto-linear-untrained", 2048, 2048, "auto", "linear", model=UNTRAINED, big=True),
    # The paper's cross-resolution experiment at toy scale: direct sampling above native.
    Case("256-direct-linear", 256, 256, "direct", "linear", goal="report (cross-resolution)"),
    Case("256-direct-linear-untrained", 256, 256, "direct", "linear", model=UNTRAINED,
         goal="report (cross-resolution)"),
    Case("256-direct-softmax", 256, 256, "direct", "softmax", goal="report (cross-resolution)"),
    Case("512-direct-softmax", 512, 512, "direct", "softmax", goal="report (cross-resolution)"),
    Case("512-direct-linear", 512, 512, "direct", "linear", goal="report (cross-resolution)"),
)
# shapes-sd15's built-in ControlNet (seg) and IP-Adapter (issue 27). What each case asks and expects
# is `conditioned_request`'s docstring.
CONDITIONED_CASES: tuple[Case, ...] = (
    Case("control-128-linear", 128, 128, "direct", "linear", conditioning="control",
         goal="map's shape and position >= 90%, prompt's colours >= 85%"),
    Case("control-128-softmax", 128, 128, "direct", "softmax", conditioning="control",
         goal="map's shape and position >= 90%, prompt's colours >= 85%"),
    Case("control-256-auto-linear", 256, 256, "auto", "linear", conditioning="control",
         goal="map's shape and position >= 80%"),
    Case("control-512-auto-linear", 512, 512, "auto", "linear", conditioning="control",
         goal="map's shape and position >= 80%"),
    Case("control-128-scale0-linear", 128, 128, "direct", "linear", conditioning="control", scale=0.0,
         goal="the prompt's shape and position again"),
    Case("ip-128-linear", 128, 128, "direct", "linear", conditioning="ip", goal="reference's colours >= 80%"),
    Case("ip-128-scale0-linear", 128, 128, "direct", "linear", conditioning="ip", scale=0.0,
         goal="colours at chance (1 in 8)"),
    Case("control+ip-128-linear", 128, 128, "direct", "linear", conditioning="control+ip",
         goal="map's geometry and reference's colours, all four >= 70%"),
)
ALL_CASES: tuple[Case, ...] = CASES + CONDITIONED_CASES


@dataclass
class CaseResult:
    """A case's figures: rates in [0, 1] over `prompts` images."""

    case: str
    prompts: int
    rates: dict[str, float] = field(default_factory=dict)
    seconds_per_image: float = 0.0
    seam: dict[str, float] | None = None
    command: str = ""  # the invocation that measured it (a table may join several --resume runs)
    steps: int = 0
    guidance: float = 0.0


def wrap_seam(image) -> dict[str, float]:
    """Mean absolute difference across the left/right wrap edge, against neighbouring columns."""
    pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3)
    across_wrap = float(np.abs(pixels[:, 0] - pixels[:, -1]).mean())
    neighbours = float(np.abs(np.diff(pixels, axis=1)).mean())
    return {"wrap": across_wrap, "columns": neighbours}


def registry_with_untrained(home: Path):
    """The studio registry plus `shapes-sd15-from-unet`: the same files, LinFusion `from_unet`."""
    from linfusion_engine.registry import ModelEntry, ModelRegistry

    registry = ModelRegistry(home / "models.yaml", home / "models")
    trained = registry.get(MODEL)
    registry.add(ModelEntry(UNTRAINED, trained.family, trained.base, "from_unet", trained.native_size,
                            "shapes-sd15 with untrained LinFusion layers (bench only)",
                            sdedit_strengths=trained.sdedit_strengths))  # the same SDEdit chain
    return registry


def conditioned_request(case: Case, index: int, steps: int, guidance: float):
    """(request, the scene a right image shows) for held-out prompt `index` of `case`.

    Scene S is the held-out scene; P has S's colours with another shape at another position.
    - plain: S's prompt; expects S.
    - `control`: the seg map of S, P's prompt (it names the wrong shape and place, the right
      colours); expects S: the map wins on geometry, the prompt on colour. At scale 0, expects P.
    - `ip`: S's colour-less prompt (`a circle on the left`) and a reference with S's colours drawn
      as another jittered shape elsewhere; expects S: colours from the reference, geometry from
      the prompt. At scale 0 the colours can only be guessed.
    - `control+ip`: the map of S, the reference, and P's colour-less prompt; expects S, every
      attribute from the conditioning.
    """
    from linfusion_engine import RenderRequest
    from linfusion_engine.conditioning.inputs import ControlInput, IpAdapterInput

    scene = scene_from_seed(EVAL_SEED_START + index)
    rng = random.Random(EVAL_SEED_START + index)
    other = other_geometry(scene, rng)
    prompt, expected, controlnets, ip_adapter = scene.prompt, scene, [], None
    if "control" in case.conditioning:
        controlnets = [ControlInput("seg", control_map(scene, case.width, case.height), case.scale)]
        prompt = other.prompt
        expected = scene if case.scale > 0 else other
    if "ip" in case.conditioning:
        reference = jittered(other_geometry(scene, rng), rng)
        ip_adapter = IpAdapterInput([draw(reference, 128, 128)], case.scale)
        prompt = other.colorless_prompt if controlnets else scene.colorless_prompt
    request = RenderRequest(prompt, seed=index, width=case.width, height=case.height, steps=steps, guidance=guidance,
                            attention=case.attention, strategy=case.strategy, tileable=case.tileable,
                            controlnets=controlnets, ip_adapter=ip_adapter)
    return request, expected


def run_case(case: Case, engines: dict, prompts: int, steps: int, guidance: float, images: Path | None) -> CaseResult:
    engine = engines[case.model]
    hits = dict.fromkeys((*ATTRIBUTES, "geometry", "all", "single"), 0)
    seams = []
    started = time.perf_counter()
    for index in range(prompts):
        request, expected = conditioned_request(case, index, steps, guidance)
        image = engine.render(request).image
        reading = analyze(image)
        right = matches(reading, expected)
        for key in ATTRIBUTES:
            hits[key] += right[key]
        hits["geometry"] += right["shape"] and right["position"]
        hits["all"] += all(right.values())
        hits["single"] += reading.objects == 1
        if case.tileable:
            seams.append(wrap_seam(image))
        if images is not None and index < 8:
            image.save(images / f"{case.name}-{index}.png")
    elapsed = time.perf_counter() - started
    result = CaseResult(case.name, prompts, {key: value / prompts for key, value in hits.items()}, elapsed / prompts)
    if seams:
        result.seam = {key: float(np.mean([s[key] for s in seams])) for key in ("wrap", "columns")}
    return result


def linear_vs_softmax(engine, prompts: int, steps: int, guidance: float) -> float:
    """Mean absolute pixel difference (0-255) between LinFusion and softmax at 128 px, same seeds."""
    from linfusion_engine import RenderRequest

    differences = []
    for index in range(prompts):
        prompt = scene_from_seed(EVAL_SEED_START + index).prompt
        pair = [np.asarray(engine.render(RenderRequest(prompt, seed=index, width=128, height=128, steps=steps,
                                                       guidance=guidance, attention=mode)).image, dtype=np.float32)
                for mode in ("linear", "softmax")]
        differences.append(float(np.abs(pair[0] - pair[1]).mean()))
    return float(np.mean(differences))


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def report(results: dict, steps: int, guidance: float) -> str:
    rows = ["| case | model | prompts | steps | colour | shape | position | background | all four | single object "
            "| s/image | goal |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for case in CASES:
        found = results.get(case.name)
        if found is None or "rates" not in found:
            continue
        rates = found["rates"]
        model = "trained LinFusion" if case.model == MODEL else "untrained (from_unet)"
        if case.attention == "softmax":
            model = "softmax (the base)"
        rows.append(f"| {case.name} | {model} | {found['prompts']} | {found.get('steps') or steps} | " + " | ".join(
            percent(rates[key]) for key in (*ATTRIBUTES, "all", "single"))
            + f" | {found['seconds_per_image']:.2f} | {case.goal} |")
    conditioned = conditioned_rows(results)
    commands = sorted({found["command"] for found in results.values() if found.get("command")})
    lines = ["Measured by (`.venv/bin/python` each, in one checkout; later runs add cases with `--resume`):", "",
             *[f"- `{command}`" for command in commands], "",
             f"Guidance {guidance}, the engine's default scheduler (euler), fp32 on this 2-core CPU; prompts "
             f"from seed {EVAL_SEED_START} on (never used in training); each figure is the share of images "
             "whose attribute the analyzer read as the prompt asked.", "", *rows]
    if conditioned:
        lines += ["", "With shapes-sd15's ControlNet (`seg`) and IP-Adapter: each figure is the share of images "
                      "whose attribute the analyzer read as the case expects (`conditioned_request` in the bench "
                      "says what each case asks: the map's geometry against a prompt naming another shape and "
                      "place, the reference's colours with a colour-less prompt).", "", *conditioned]
    seam_rows = [(name, found["seam"]) for name, found in results.items() if found.get("seam")]
    if seam_rows:
        lines += ["", "| tileable case | mean abs. difference across the wrap edge | between neighbouring columns |",
                  "| --- | --- | --- |"]
        lines += [f"| {name} | {seam['wrap']:.2f} | {seam['columns']:.2f} |" for name, seam in seam_rows]
    if "linear-vs-softmax" in results:
        found = results["linear-vs-softmax"]
        lines += ["", f"LinFusion against softmax at 128x128, same seed: mean absolute pixel difference "
                      f"{found['trained']:.2f} (trained) and {found['untrained']:.2f} (untrained from_unet), "
                      f"on a 0-255 scale, over {found['prompts']} prompts."]
    return "\n".join(lines)


def conditioned_rows(results: dict) -> list[str]:
    """The conditioned cases' table (empty when none was measured)."""
    rows = []
    for case in CONDITIONED_CASES:
        found = results.get(case.name)
        if found is None:
            continue
        rates = found["rates"]
        rows.append(f"| {case.name} | {case.attention} | {case.scale:g} | {found['prompts']} | " + " | ".join(
            percent(rates[key]) for key in (*ATTRIBUTES, "geometry", "all", "single"))
            + f" | {found['seconds_per_image']:.2f} | {case.goal} |")
    if not rows:
        return []
    return ["| case | attention | scale | prompts | colour | shape | position | background | shape + position "
            "| all four | single object | s/image | goal |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", *rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--big-prompts", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0,
                        help="shapes-sd15's guidance: at SD's usual 7.5 it oversaturates colours (docs/quality.md)")
    parser.add_argument("--cases", default="", help="comma-separated case names, `linear-vs-softmax` among them "
                                                    "(default: all)")
    parser.add_argument("--resume", action="store_true", help="keep finished cases from the results file")
    parser.add_argument("--images", type=Path, default=None, help="save the first 8 images of each case here")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="do not rewrite docs/quality.md")
    args = parser.parse_args(argv)

    from linfusion_engine import Engine

    wanted = [c for c in ALL_CASES if not args.cases or c.name in args.cases.split(",")]
    results = json.loads(args.results.read_text()) if args.resume and args.results.is_file() else {}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    if args.images:
        args.images.mkdir(parents=True, exist_ok=True)
    command = "bench/quality_bench.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    command = command.strip()
    with tempfile.TemporaryDirectory() as home:
        registry = registry_with_untrained(Path(home))
        engines = {name: Engine(name, device="cpu", registry=registry) for name in (MODEL, UNTRAINED)}
        for case in wanted:
            if case.name in results:
                continue
            prompts = args.big_prompts if case.big else args.prompts
            result = run_case(case, engines, prompts, args.steps, args.guidance, args.images)
            result.command, result.steps, result.guidance = command, args.steps, args.guidance
            results[case.name] = asdict(result)
            args.results.write_text(json.dumps(results, indent=1))
            print(f"{case.name}: all four {percent(result.rates['all'])}, single {percent(result.rates['single'])}, "
                  f"{result.seconds_per_image:.2f} s/image", flush=True)
        if "linear-vs-softmax" not in results and (not args.cases or "linear-vs-softmax" in args.cases.split(",")):
            count = min(args.prompts, 50)
            results["linear-vs-softmax"] = {
                "prompts": count, "command": command,
                "trained": linear_vs_softmax(engines[MODEL], count, args.steps, args.guidance),
                "untrained": linear_vs_softmax(engines[UNTRAINED], count, args.steps, args.guidance)}
            args.results.write_text(json.dumps(results, indent=1))
    text = report(results, args.steps, args.guidance)
    print(text)
    if not args.no_write:
        update_section("quality", text, doc=DOC, heading="## Figures")


if __name__ == "__main__":
    main()
