"""Per-job CPU of a shard, part by part: what each job costs besides its render. Writes the
`bench:job-cost` section of docs/benchmarks.md.

    .venv/bin/python bench/job_cost_bench.py [--jobs 200]

In one process, one torch thread, on the embedded catalogue (SQLite + a folder), with no Prefect:
(1) the engine's render alone, and `render_png` (render + PNG bytes);
(2) each catalogue step on its own over the same jobs: claim (one lease UPDATE), the metadata
    embed, the WebP thumbnail, and the whole ingest (intent, two fsynced object writes, row);
(3) `flows.flow.render_records` over fresh jobs: the job runner as a shard runs it (threads, lease,
    retries policy, progress) rendering in this process, and the same with Prefect task runs as
    the job unit (what the project did before), both against a real local Prefect server, with
    that server's CPU.
CPU is process time (all threads) per job; the server's is read with psutil.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, also when loaded by path
from benchdocs import update_section  # noqa: E402
from orchestration_bench import free_port, manifest_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def plan(catalogue, work: Path, jobs: int, project: str) -> list[dict]:
    from flows.batch import load_and_expand, plan_run
    from linstudio_settings import get_settings

    path = work / f"{project}.yaml"
    path.write_text(manifest_text(jobs, project))
    return plan_run(catalogue, load_and_expand([path], get_settings()), force=False).to_render


def cpu_per_job(fn, records: list[dict]) -> float:
    """Milliseconds of process CPU per record for `fn(record)` over all records."""
    started = time.process_time()
    for record in records:
        fn(record)
    return 1000 * (time.process_time() - started) / len(records)


def start_prefect_server(work: Path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=open(work / "server.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return server, url
        except OSError:
            if time.time() > deadline:
                server.kill()
                raise RuntimeError("Prefect server did not start")
            time.sleep(0.5)


def server_cpu(server) -> float:
    import psutil

    proc = psutil.Process(server.pid)
    return sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)])


def as_prefect_tasks(records: list[dict], catalogue, settings, registry) -> None:
    """The same jobs with one Prefect task run each (the project's job unit before), for comparison."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.futures import wait

    from flows.devices import SlotPool
    from flows.job_runner import RunContext, run_job

    ctx = RunContext(catalogue=catalogue, slots=SlotPool([None]), worker="bench/1",
                     lease_seconds=settings.lease_seconds, worker_name="bench", registry=registry)
    job_task = task(name="render-job", cache_policy=NO_CACHE)(run_job)

    @flow(name="job-cost-bench-tasks")
    def tasks_flow() -> None:
        futures = []
        for record in records:  # a window of two in flight, as the job runner keeps
            futures.append(job_task.submit(ctx, record))
            if len(futures) >= 2:
                futures.pop(0).result()
        wait(futures)

    tasks_flow()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="linstudio-job-cost-"))
    os.environ.update({"LINSTUDIO_HOME": str(work / "home"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    for name in ("LINSTUDIO_DATABASE_URL", "LINSTUDIO_STORE_URL", "LINSTUDIO_RENDER_HOST"):
        os.environ.pop(name, None)
    import torch

    torch.set_num_threads(1)
    from catalogue import Catalogue
    from catalogue.pngmeta import embed_render_metadata
    from catalogue.thumbs import make_thumbnail
    from flows.engines import engine_for
    from flows.rendering import render_png
    from linfusion_engine import RenderRequest
    from linfusion_engine.registry import ModelRegistry
    from linstudio_settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    registry = ModelRegistry.from_settings(settings)
    catalogue = Catalogue.from_settings(settings)
    catalogue.migrate()
    n = args.jobs
    rows: list[tuple[str, float]] = []
    parts = plan(catalogue, work, n, "parts")
    with engine_for("tiny-sd15", registry, device=None, dtype=None) as engine:
        engine.render(RenderRequest(prompt="warm", seed=0, width=64, height=64, steps=4, attention="linear"))
        rows.append(("engine render (64 px, 4 steps)", cpu_per_job(lambda r: engine.render(RenderRequest(
            prompt="a prop", seed=r["seed"], width=64, height=64, steps=4, attention="linear")), parts)))
    pngs: dict[str, tuple[bytes, dict]] = {}

    def render(record: dict) -> None:
        pngs[record["key"]] = render_png(record, None, None, registry=registry)

    rows.append(("render_png (render + PNG bytes)", cpu_per_job(render, parts)))
    rows.append(("claim (lease UPDATE, one transaction)", cpu_per_job(
        lambda r: catalogue.claim(r["key"], "bench/1", 600), parts)))
    sample_png, sample_meta = next(iter(pngs.values()))
    rows.append(("PNG metadata embed", cpu_per_job(lambda r: embed_render_metadata(sample_png, {**r, "engine": sample_meta}), parts)))
    rows.append(("WebP thumbnail", cpu_per_job(lambda r: make_thumbnail(sample_png), parts)))
    rows.append(("ingest (3 transactions, 2 fsynced writes, embed, thumbnail, sha256)", cpu_per_job(
        lambda r: catalogue.ingest(r["key"], pngs[r["key"]][0], {**r, "engine": pngs[r["key"]][1], "timings": {}},
                                   worker="bench/1", made_by="bench"), parts)))

    server, url = start_prefect_server(work)
    os.environ["PREFECT_API_URL"] = url
    from flows.prefect_env import configure_prefect_defaults

    configure_prefect_defaults()
    import flows.batch  # noqa: F401  (imported before the clock, as a flow run has it)
    from flows.flow import render_records
    try:
        whole = {}
        for label, project, run in (
                ("job runner (this project: plain threads in the shard's flow run)", "runner",
                 lambda records: render_records(records, catalogue=catalogue, settings=settings, registry=registry)),
                ("one Prefect task run per job (before)", "tasks",
                 lambda records: as_prefect_tasks(records, catalogue, settings, registry))):
            records = plan(catalogue, work, n, project)
            before_server, before = server_cpu(server), time.process_time()
            run(records)
            spent = time.process_time() - before
            time.sleep(2)  # the server finishes recording what it was sent
            whole[label] = (1000 * spent / n, 1000 * (server_cpu(server) - before_server) / n)
    finally:
        server.kill()
        catalogue.close()
    text = (
        "## Per-job cost of a shard, part by part (CPU)\n\n"
        f"Command: `.venv/bin/python bench/job_cost_bench.py --jobs {n}`  \n"
        f"Machine: {dt.date.today()}, {platform.processor() or platform.machine()}, nproc {os.cpu_count()}; one torch "
        "thread; embedded catalogue (SQLite + folder); tiny-sd15 at 64 px, 4 steps. Process CPU per job.\n\n"
        "| part | CPU per job |\n| --- | ---: |\n"
        + "\n".join(f"| {label} | {ms:.1f} ms |" for label, ms in rows) + "\n\n"
        "Whole jobs (claim, render in this process, ingest), the job unit compared, against a local Prefect server:\n\n"
        "| job unit | CPU per job in the flow run | Prefect server CPU per job |\n| --- | ---: | ---: |\n"
        + "\n".join(f"| {label} | {ms:.1f} ms | {server_ms:.1f} ms |" for label, (ms, server_ms) in whole.items())
        + "\n\nThe difference between the two rows is what a Prefect task run per job costs; the render and the "
        "catalogue's work are the same in both.\n")
    print(text)
    if not args.no_write:
        update_section("job-cost", text)


if __name__ == "__main__":
    main()
