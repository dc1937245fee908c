"""Orchestration overhead: 200 tiny jobs through a real Prefect server and two workers vs the bare
engine loop on the same two devices, in one run on this machine. Writes the `bench:orchestration`
section of docs/benchmarks.md.

    .venv/bin/python bench/orchestration_bench.py [--jobs 200] [--shard-size 100]

What it does, with every renderer held to one torch thread so that each stands for one device
(this machine has two cores; the pipeline has two GPU workers):
(1) the bare loop: two processes, each loads the model, waits at a barrier, then renders its half
    of the jobs in a plain loop; timed from the barrier to the last image;
(2) the pipeline: a Prefect server (its own SQLite home, analytics off, recorder batch sizes
    raised), `linstudio deploy`, a control worker and two GPU-pool workers whose render hosts have
    preloaded the model (as a production host has by the time the nightly batch starts), the same
    jobs `linstudio submit`ted, then a `nightly-batch` run created ahead of its start time (as its
    schedule does); timed from that start time to the submission being done in the catalogue, while
    sampling the RSS and the CPU of every process by role (render hosts, flow runs, workers, server).
    The catalogue's render times split the total into the fixed latency before the first render
    lands and the steady per-job cost after it; the Prefect server's flow-run records say where the
    fixed latency goes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, also when loaded by path
from benchdocs import update_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MANIFEST_HEAD = """version: 1
team: game
project: {project}
defaults: {{model: {model}, steps: {steps}, sizes: [{size}], attention: linear}}
assets:
"""
# What each job renders; a GPU session passes a real model and size (--model, --size, --steps).
DEFAULT_MODEL, DEFAULT_SIZE, DEFAULT_STEPS = "tiny-sd15", "64x64", 4


def manifest_text(jobs: int, project: str = "orchestration-bench", model: str = DEFAULT_MODEL,
                  size: str = DEFAULT_SIZE, steps: int = DEFAULT_STEPS) -> str:
    """`jobs` jobs as assets of at most 50 seeds each (a manifest allows 64 seeds per asset)."""
    body = MANIFEST_HEAD.format(project=project, model=model, size=size, steps=steps)
    for start in range(0, jobs, 50):
        seeds = ", ".join(str(s) for s in range(start, min(start + 50, jobs)))
        body += f'  - id: prop-{start // 50}\n    prompt: "a prop"\n    seeds: [{seeds}]\n'
    return body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SCHEDULE_AHEAD_SECONDS = 12  # less than the workers' prefetch window (PREFECT_WORKER_PREFETCH_SECONDS, 10 s) + a poll
ONE_DEVICE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one renderer = one device


def bare_worker(jobs: list[int], model: str, size: str, steps: int) -> None:
    """Child process of the bare loop: load, say `ready`, wait for `go`, render, say the seconds."""
    import torch

    from linfusion_engine import Engine, RenderRequest
    from linfusion_engine.registry import ModelRegistry
    from linstudio_settings import get_settings

    torch.set_num_threads(1)
    width, height = (int(v) for v in size.split("x"))
    engine = Engine(model, registry=ModelRegistry.from_settings(get_settings()))
    engine.load()
    print("ready", flush=True)
    sys.stdin.readline()
    started, cpu_started = time.perf_counter(), time.process_time()
    for seed in jobs:
        engine.render(RenderRequest(prompt="a prop", seed=seed, width=width, height=height, steps=steps,
                                    attention="linear"))
    print(f"done {time.perf_counter() - started:.3f} {time.process_time() - cpu_started:.3f}", flush=True)


def bare_loop(jobs: int, devices: int, workload: dict) -> tuple[float, float]:
    """(wall, CPU) seconds for `devices` plain loops sharing the jobs, started together after loading."""
    env = {**os.environ, **ONE_DEVICE_ENV}
    options = ["--model", workload["model"], "--size", workload["size"], "--steps", str(workload["steps"])]
    children = [subprocess.Popen([sys.executable, __file__, "--bare-worker", ",".join(map(str, range(d, jobs, devices))),
                                  *options],
                                 env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for d in range(devices)]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    started = time.perf_counter()
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    cpu = 0.0
    for child in children:
        done = child.stdout.readline().split()
        assert done[0] == "done", done
        cpu += float(done[2])
        child.wait()
    return time.perf_counter() - started, cpu


ROLES = ("render hosts", "flow runs", "workers", "server")


def role_of(tree: str, cmdline: str) -> str:
    """What a process of the pipeline is for: rendering, a flow run, a worker (supervisor and Prefect
    worker), or the Prefect server."""
    if "flows.render_host" in cmdline:
        return "render hosts"
    if "prefect.engine" in cmdline or "flow_engine" in cmdline:
        return "flow runs"
    return "server" if tree == "server" else "workers"


class ProcessSampler(threading.Thread):
    """Every 0.2 s: peak RSS of each named process tree, and the CPU seconds of every process in the
    trees by role (`ROLES`): the render hosts are the rendering, everything else the orchestration.
    A process's CPU is its last sample, so one that exits between samples loses at most 0.2 s of it."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pids: dict[str, int] = {}
        self.peaks: dict[str, int] = {}
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (role, CPU seconds)
        self.series: list[tuple[float, dict[str, float]]] = []  # (epoch seconds, CPU seconds by role)
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.wait(0.2):
            for name, pid in list(self.pids.items()):
                try:
                    proc = psutil.Process(pid)
                    family = [proc, *proc.children(recursive=True)]
                except psutil.Error:
                    continue
                total = 0
                for member in family:
                    try:
                        with member.oneshot():
                            total += member.memory_info().rss
                            times = member.cpu_times()
                            role = role_of(name, " ".join(member.cmdline()))
                        self.cpu[member.pid] = (role, times.user + times.system)
                    except psutil.Error:
                        continue
                self.peaks[name] = max(self.peaks.get(name, 0), total)
            self.series.append((time.time(), self.by_role()))

    def by_role(self) -> dict[str, float]:
        """CPU seconds so far, by role."""
        totals = dict.fromkeys(ROLES, 0.0)
        for role, cpu in list(self.cpu.values()):
            totals[role] += cpu
        return totals

    def cpu_seconds(self) -> tuple[float, float]:
        """(render hosts, orchestration) CPU seconds so far."""
        totals = self.by_role()
        return totals["render hosts"], sum(totals.values()) - totals["render hosts"]

    def cpu_between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds by role spent between two epoch times (the nearest samples)."""
        def at(moment: float) -> dict[str, float]:
            return min(self.series, key=lambda item: abs(item[0] - moment))[1]

        before, after = at(start), at(end)
        return {role: round(after[role] - before[role], 3) for role in ROLES}


def orchestrated(jobs: int, shard_size: int, work: Path, workload: dict) -> dict:
    import psutil

    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
           "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "LINSTUDIO_HOME": str(work / "home"),
           "LINSTUDIO_SHARD_SIZE": str(shard_size), "LINSTUDIO_WORK_POOL": "bench-gpu",
           "LINSTUDIO_CONTROL_POOL": "bench-control", **ONE_DEVICE_ENV}
    for name in ("LINSTUDIO_DATABASE_URL", "LINSTUDIO_STORE_URL", "LINSTUDIO_INBOX_URL"):
        env.pop(name, None)
    sampler = ProcessSampler()
    procs = []
    try:
        server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=open(work / "server.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        procs.append(server)
        sampler.pids["server"] = server.pid
        sampler.start()
        import urllib.request

        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{env['PREFECT_API_URL']}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("Prefect server did not start")
                time.sleep(0.5)
        subprocess.run([str(BIN / "linstudio"), "deploy"], env=env, check=True, capture_output=True)
        manifest = work / "bench.yaml"
        manifest.write_text(manifest_text(jobs, **workload))
        out = subprocess.run([str(BIN / "linstudio"), "submit", str(manifest)], env=env, check=True,
                             capture_output=True, text=True).stdout
        submission = out.split()[1]
        workers = (("control", "bench-control", ["--no-render-host"]),
                   ("worker-a", "bench-gpu", ["--preload", workload["model"]]),
                   ("worker-b", "bench-gpu", ["--preload", workload["model"]]))
        for name, pool, extra in workers:
            proc = subprocess.Popen([str(BIN / "linstudio"), "worker", "--pool", pool, "--name", name, *extra],
                                    env=env, stdout=open(work / f"{name}.log", "w"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
            procs.append(proc)
            sampler.pids[name] = proc.pid
        deadline = time.time() + 300
        while not all(f"preloaded {workload['model']}" in (work / f"{n}.log").read_text() for n in ("worker-a", "worker-b")):
            if time.time() > deadline:
                raise RuntimeError("render hosts did not preload the model in 5 minutes")
            time.sleep(0.5)
        time.sleep(3)  # the workers' first poll of their pools
        # Trigger and watch from this process (a CLI per poll would take CPU from the renderers).
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from catalogue import Catalogue
        from linstudio_settings import get_settings

        catalogue = Catalogue.from_settings(get_settings())
        hosts_cpu_before, orchestration_cpu_before = sampler.cpu_seconds()
        # Like its cron schedule does, the run is created ahead of its start time, so the control
        # worker can start its process early (Prefect's prefetch); the clock starts at that time.
        at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=SCHEDULE_AHEAD_SECONDS)
        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            run_deployment("linstudio-nightly/nightly-batch", timeout=0, scheduled_time=at)
        time.sleep(max((at - dt.datetime.now(dt.timezone.utc)).total_seconds(), 0))
        trigger_wall = at
        started = time.perf_counter()
        while True:
            rows = [r for r in catalogue.submissions(limit=10) if r["submission_id"] == submission]
            if rows and rows[0]["status"] in ("done", "failed"):
                break
            if time.perf_counter() - started > 1800:
                raise RuntimeError("nightly batch did not finish in 30 minutes")
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
        time.sleep(0.5)  # a last CPU sample
        hosts_cpu, orchestration_cpu = sampler.cpu_seconds()
        landed = render_times(catalogue)
        catalogue.close()
        first = (landed[0] - trigger_wall).total_seconds()
        steady = (landed[-1] - landed[0]).total_seconds() / max(len(landed) - 1, 1)
        steady_cpu = sampler.cpu_between(landed[0].timestamp(), landed[-1].timestamp())
        timeline = flow_run_timeline(env["PREFECT_API_URL"], trigger_wall, landed[0])
        return {"seconds": elapsed, "status": rows[0]["status"], "peaks": dict(sampler.peaks),
                "shards": -(-jobs // shard_size), "first_render_s": first, "steady_s_per_job": steady,
                "render_host_cpu_s": hosts_cpu - hosts_cpu_before,
                "orchestration_cpu_s": orchestration_cpu - orchestration_cpu_before,
                "steady_cpu_s": steady_cpu,
                "timeline": timeline, "renders": len(landed)}
    finally:
        sampler.stop.set()
        for proc in procs:
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
            except psutil.Error:
                pass
            proc.kill()


def flow_run_timeline(api_url: str, trigger: dt.datetime, first_render: dt.datetime) -> dict:
    """Where the fixed latency goes: seconds after the trigger at which the nightly run started,
    the shard runs were created and started running, and the first render landed."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def after(moment) -> float | None:
        return None if moment is None else round((moment - trigger).total_seconds(), 2)

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        flows = {f.id: f.name for f in client.read_flows()}
    nightly = [r for r in runs if flows.get(r.flow_id) == "linstudio-nightly"]
    shards = [r for r in runs if flows.get(r.flow_id) == "linstudio-render-jobs"]
    return {"nightly_running": after(nightly[0].start_time) if nightly else None,
            "shards_created": [after(r.created) for r in sorted(shards, key=lambda r: r.created)],
            "shards_running": sorted(after(r.start_time) for r in shards if r.start_time is not None),
            "first_render": after(first_render)}


def render_times(catalogue) -> list[dt.datetime]:
    """When each render of the bench's catalogue was recorded, sorted (UTC)."""
    rows, after = [], None
    while page := catalogue.renders(limit=1000, after=after):  # newest first, a page at a time
        rows.extend(page)
        after = page[-1]["render_id"]
    times = [dt.datetime.fromisoformat(r["created_at"]) for r in rows]
    return sorted(t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc) for t in times)


def write_section(text: str) -> None:
    update_section("orchestration", text)


def measure(jobs: int, shard_size: int, devices: int, keep: bool, workload: dict) -> dict:
    """One size: the bare loop, then the pipeline, in a fresh work folder."""
    from linstudio_settings import get_settings

    work = Path(tempfile.mkdtemp(prefix="linstudio-orch-bench-"))
    os.environ["LINSTUDIO_HOME"] = str(work / "home")
    get_settings.cache_clear()  # each size has its own catalogue
    try:
        bare, bare_cpu = bare_loop(jobs, devices, workload)
        orch = orchestrated(jobs, shard_size, work, workload)
    finally:
        if keep:
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result = {"jobs": jobs, "shard_size": shard_size, "bare_s": bare, "bare_cpu_s": bare_cpu, **orch}
    print(json.dumps(result, indent=2, default=str), flush=True)
    return result


def device_label() -> str:
    """What rendered: `CPU`, or the GPU's name (both renderers share it, as two workers on one GPU would)."""
    import torch

    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}, both renderers on it"
    return "CPU"


def added(r: dict) -> float:
    """Whole-batch wall time the pipeline adds over the bare loop, as a fraction of the bare loop."""
    return (r["seconds"] - r["bare_s"]) / r["bare_s"]


def steady_added(r: dict) -> float:
    """Steady-state time between renders the pipeline adds over the bare loop's, as a fraction."""
    bare = r["bare_s"] / r["jobs"]
    return (r["steady_s_per_job"] - bare) / bare


def median_run(runs: list[dict]) -> dict:
    """The run with the median whole-batch overhead, carrying every run's overheads for the table."""
    chosen = dict(sorted(runs, key=added)[len(runs) // 2])
    chosen["all_added"] = sorted(added(r) for r in runs)
    chosen["all_steady_added"] = sorted(steady_added(r) for r in runs)
    return chosen


def spread(values: list[float]) -> str:
    """` (3 runs: +52% / +68% / +72%)` when a size was measured more than once."""
    return "" if len(values) < 2 else f" ({len(values)} runs: " + " / ".join(f"{100 * v:+.0f}%" for v in values) + ")"


def row(r: dict) -> str:
    jobs = r["jobs"]
    overhead = r["seconds"] - r["bare_s"]
    bare_ms, steady_ms = 1000 * r["bare_s"] / jobs, 1000 * r["steady_s_per_job"]
    intervals = max(r["renders"] - 1, 1)
    cpu = {role: 1000 * seconds / intervals for role, seconds in r["steady_cpu_s"].items()}
    orchestration = sum(v for k, v in cpu.items() if k != "render hosts")
    return (f"| {jobs} | {r['shards']} x {r['shard_size']} | {r['bare_s']:.1f} s | {r['seconds']:.1f} s ({r['status']}) | "
            f"**{100 * overhead / r['bare_s']:+.0f}%**{spread(r.get('all_added', []))} | {r['first_render_s']:.1f} s | "
            f"{steady_ms:.1f} vs {bare_ms:.1f} ms (**{100 * (steady_ms - bare_ms) / bare_ms:+.0f}%**, "
            f"{steady_ms - bare_ms:+.1f} ms){spread(r.get('all_steady_added', []))} | {cpu['render hosts']:.0f} ms | **{orchestration:.1f} ms** "
            f"({cpu['flow runs']:.1f} / {cpu['workers']:.1f} / {cpu['server']:.1f}) |")


def timeline_line(r: dict) -> str:
    t = r["timeline"]
    shards_running = " and ".join(f"{x:+.1f} s" for x in t["shards_running"])
    return (f"- {r['jobs']} jobs: the nightly run was running at {t['nightly_running']:+.1f} s, had created its shard "
            f"runs by {max(t['shards_created']):+.1f} s; the GPU workers had them running at {shards_running}; "
            f"the first render landed at {t['first_render']:+.1f} s.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[200], help="batch sizes, each measured on its own")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="jobs per shard (default: the batch split evenly over the two workers)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server and worker logs)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the model every job renders (a GPU session: a real one)")
    parser.add_argument("--size", default=DEFAULT_SIZE, help="WxH of every job")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps of every job")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each size this many times and report the run with the median overhead")
    parser.add_argument("--bare-worker", help=argparse.SUPPRESS)  # internal: one bare-loop process
    args = parser.parse_args()
    if args.bare_worker is not None:
        bare_worker([int(seed) for seed in args.bare_worker.split(",") if seed], args.model, args.size, args.steps)
        return
    devices = 2
    workload = {"model": args.model, "size": args.size, "steps": args.steps}
    results = [median_run([measure(jobs, args.shard_size or -(-jobs // devices), devices, args.keep, workload)
                           for _ in range(args.repeat)])
               for jobs in args.jobs]
    peaks = {k: max(r["peaks"].get(k, 0) for r in results) / 2**20 for k in results[0]["peaks"]}
    options = [f"--shard-size {args.shard_size}"] if args.shard_size else []
    options += [f"--repeat {args.repeat}"] if args.repeat > 1 else []
    options += [f"--{name} {value}" for name, value in workload.items()
                if value != {"model": DEFAULT_MODEL, "size": DEFAULT_SIZE, "steps": DEFAULT_STEPS}[name]]
    command = "`.venv/bin/python bench/orchestration_bench.py --jobs " + " ".join(map(str, args.jobs)) + "".join(
        f" {option}" for option in options) + "`"
    text = (
        "## Orchestration overhead: Prefect server + two workers vs the bare engine loop on two devices "
        f"({device_label()})\n\n"
        f"Command: {command}  \n"
        f"Machine: {dt.date.today()}, {platform.processor() or platform.machine()}, nproc {os.cpu_count()}. Each "
        "renderer (a bare-loop process or a worker's render host) is held to one torch thread, so each stands for "
        f"one device. {args.model}, {args.size} px, {args.steps} steps, linear attention. Bare: two processes load "
        "the model, then render half the jobs each in a plain loop, timed from a common start. Pipeline: `linstudio submit`, "
        f"then a `nightly-batch` run created {SCHEDULE_AHEAD_SECONDS} s ahead of its start time (as its cron schedule "
        "creates it: the control worker prefetches it and Prefect holds it until that time), timed from that "
        "time to the submission being done in the catalogue, with a control worker and two GPU-pool workers "
        "whose render hosts had preloaded the model.\n\n"
        "| jobs | shards | bare loop | pipeline | added, whole batch | fixed: first render after the start time | "
        "steady: a render every (pipeline vs bare) | steady CPU per job: render hosts | steady CPU per job: "
        "orchestration (flow runs / workers / server) |\n"
        "| ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | --- |\n"
        + "\n".join(row(r) for r in results) + "\n\n"
        "Where the fixed latency goes (seconds after the start time, from the Prefect server's records):\n"
        + "\n".join(timeline_line(r) for r in results) + "\n\n"
        "Goal: orchestration adds at most 10% over the bare loop. How to read it: the pipeline's cost is a fixed "
        "latency before the first render lands (the nightly run's planning and dispatch, the GPU workers' poll "
        "every 2 s, and each shard flow run's process start: Prefect starts every flow run as a fresh Python "
        "process, which imports Prefect) plus a steady per-job cost (the lease, the render-host round trip, PNG "
        "metadata, WebP thumbnail, store writes, database rows; jobs are not Prefect task runs, see "
        "flows/job_runner.py; busy workers do not poll the server, see flows/prefect_worker.py; a shard done with "
        "its own jobs helps with its sibling's, see flows/helping.py). Steady figures are taken between the first "
        "and the last render; they include the later shard's process start when it lands after the first render. "
        + (f"Each size was measured {args.repeat} times; the row is the run with the median whole-batch overhead, "
           "and the brackets give every run's. " if args.repeat > 1 else "") + "On this 2-core "
        "machine the orchestration's CPU comes out of the same cores that render, so it shows up in the wall "
        "time; on a GPU host it runs on CPU cores beside the GPU (one job's claim and ingest overlap the next "
        "one's render), so the steady orchestration CPU per job is the figure to set against a real render's "
        "seconds, and the fixed latency against the length of the whole batch.\n\n"
        "Peak RSS (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(peaks.items())) + ".\n"
    )
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
