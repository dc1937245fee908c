"""Gallery under load while a batch lands: does browsing stay error-free, and how much slower does it get?

50 clients browse and search a PostgreSQL catalogue through a real `linstudio serve` process for
60 s, twice: once alone, then while a batch of 100 render jobs is planned, claimed and ingested
into the same catalogue by a separate process (the real `Catalogue.ingest`: PNG metadata,
thumbnail, objects in a folder store, intent, row, job done), paced over the same 60 s the way a
render farm lands its results. Reported: requests, errors (must be 0), req/s and client-side
p50/p95/p99 latency of each phase, p95 per kind of request, and the ingests' own timings.

Three processes, so none measures through another's GIL: the gallery server, the load clients
(this process, asyncio, one HTTP connection per client, no think time) and the ingest. Traffic
goes to 127.0.0.1 only, and every phase is bounded in time (`--seconds`) and in requests
(`--max-requests`). The catalogue is seeded through the real schema (bench/gallery_bench.py's
rows-only seeder), and is PostgreSQL in a throwaway cluster unless --postgres-url names one.

Writes its report between the `<!-- bench:web-load -->` markers of docs/benchmarks.md.

    .venv/bin/python bench/web_load_bench.py [--clients 50] [--seconds 60] [--jobs 100] [--renders 20000]
        [--ingest-workers 4] [--postgres-url URL] [--max-requests 500000] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import io
import json
import os
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, also when loaded by path
from benchdocs import update_section  # noqa: E402
from gallery_bench import Synth, percentiles, request_mix, sample_ids, seed, throwaway_postgres  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a plain script from a checkout

DOC = REPO / "docs" / "benchmarks.md"
LIMITS = {"clients": 200, "seconds": 600, "jobs": 2000, "max_requests": 2_000_000}
KINDS = ("newest", "search", "gallery", "asset")


# -- the batch: a separate process planning and ingesting `jobs` renders ------------------------------


def batch_records(jobs: int, run: str) -> list[dict]:
    """Job records like a manifest's (JobSpec.to_record()), 512x512, unique to this run."""
    records = []
    for n in range(jobs):
        key = hashlib.sha256(f"web-load-{run}-{n}".encode()).hexdigest()
        records.append({"key": key, "team": "film", "project": "web-load", "asset_id": f"shot{n // 4}",
                        "prompt": f"a rainy neon street, shot {n // 4}, take {n % 4}", "negative_prompt": "",
                        "seed": n, "width": 512, "height": 512, "model": "tiny-sd15", "model_identity": "web-load",
                        "steps": 20, "guidance": 7.0, "scheduler": "ddim", "attention": "auto",
                        "tags": ["web-load", "night"], "parent_render_id": None})
    return records


def render_png(seed: int) -> bytes:
    """A 512x512 PNG with noise in it (so it costs what a real render costs to encode, hash and thumbnail)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, 512, dtype=np.float32)[None, :, None]  # (1, W, 1) a gradient
    pixels = np.clip(base + rng.normal(0, 24, (512, 512, 3)), 0, 255).astype(np.uint8)  # (H, W, 3)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def ingest_batch(database_url: str, store_url: str, jobs: int, seconds: float, workers: int, out: Path) -> None:
    """The batch process: plan `jobs` jobs, then `workers` threads claim and ingest them, paced so the
    batch spreads over `seconds`; writes {"ingested", "errors", "ingest_s": [...]} to `out`."""
    from catalogue import Catalogue

    records = batch_records(jobs, f"{os.getpid()}-{time.time_ns()}")
    pngs = [render_png(n) for n in range(jobs)]  # made before the clock starts: rendering is not measured
    cat = Catalogue.open(database_url, store_url)
    result = {"ingested": 0, "errors": [], "ingest_s": [], "plan_s": 0.0}
    lock = threading.Lock()
    out.with_suffix(".ready").touch()  # then wait for the clients, so the batch and the phase start together
    deadline = time.monotonic() + 300
    while not out.with_suffix(".go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    submission = cat.create_submission("film", "web-load", "film/web-load.yaml", "0" * 64, jobs)
    cat.plan_jobs(submission, records)
    result["plan_s"] = time.monotonic() - started
    interval = seconds / jobs  # one render lands every `interval` seconds across the farm

    def worker(index: int) -> None:
        for n in range(index, jobs, workers):
            delay = started + n * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            began = time.perf_counter()
            try:
                if not cat.claim(records[n]["key"], f"bench-gpu{index}", 600):
                    raise RuntimeError(f"job {n} could not be claimed")
                cat.ingest(records[n]["key"], pngs[n], {**records[n], "engine": {"name": "bench"},
                                                        "timings": {"render_s": interval}}, f"bench-gpu{index}")
            except Exception as exc:  # counted and reported, never hidden
                with lock:
                    result["errors"].append(f"job {n}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            with lock:
                result["ingested"] += 1
                result["ingest_s"].append(time.perf_counter() - began)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result["wall_s"] = time.monotonic() - started
    cat.close()
    out.write_text(json.dumps(result))


# -- the gallery server and the clients ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def gallery_server(database_url: str, store_url: str, home: Path):
    """`linstudio serve` on a free 127.0.0.1 port over the catalogue; yields its base URL."""
    import httpx

    port = free_port()
    env = {**os.environ, "LINSTUDIO_DATABASE_URL": database_url, "LINSTUDIO_STORE_URL": store_url,
           "LINSTUDIO_HOME": str(home), "LINSTUDIO_SECRET_KEY": "web-load-bench-secret-0123456789"}
    log = open(home / "serve.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "linstudio.cli", "serve", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/api/renders?limit=1", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"linstudio serve did not come up: {(home / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def urls_by_kind(synth: Synth, render_ids: list[str]) -> dict[str, list[str]]:
    """What artists do: the newest page (where the batch shows up), searches, filtered pages, asset pages."""
    from catalogue.search import encode_cursor

    mix = request_mix(synth, render_ids, encode_cursor)
    return {"newest": ["/", "/api/renders", "/?team=film", "/api/renders?project=web-load"], **mix}


async def client_loop(base: str, urls: dict[str, list[str]], stop_at: float, seed_: int, budget: list[int],
                      samples: dict[str, list[float]], errors: list[str]) -> None:
    import httpx

    rng = random.Random(seed_)
    kinds = list(urls)
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        while time.monotonic() < stop_at and budget[0] > 0:
            budget[0] -= 1
            kind = rng.choice(kinds)
            url = rng.choice(urls[kind])
            began = time.perf_counter()
            try:
                response = await http.get(url)
                problem = None if response.status_code == 200 else f"HTTP {response.status_code} {url}"
            except Exception as exc:  # a refused, dropped or timed-out request is an error too
                problem = f"{type(exc).__name__} {url}"
            samples[kind].append(time.perf_counter() - began)
            if problem:
                errors.append(problem)


def load(base: str, urls: dict[str, list[str]], clients: int, seconds: float, max_requests: int) -> dict:
    """`clients` concurrent clients for `seconds` (or `max_requests` in all); latencies per kind, errors."""
    samples: dict[str, list[float]] = {kind: [] for kind in urls}
    errors: list[str] = []
    budget = [max_requests]

    async def run() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(client_loop(base, urls, stop_at, n, budget, samples, errors) for n in range(clients)))

    started = time.monotonic()
    asyncio.run(run())
    elapsed = time.monotonic() - started
    every = sorted(s for kind in samples.values() for s in kind)
    result = {"requests": len(every), "errors": len(errors), "error_samples": errors[:5], "seconds": elapsed,
              "rate": len(every) / elapsed, "kinds": {k: percentiles(v) for k, v in samples.items() if v}}
    result["p50"], result["p95"] = percentiles(every or [0.0])
    result["p99"] = every[min(len(every) - 1, int(0.99 * (len(every) - 1)))] if every else 0.0
    result["max"] = every[-1] if every else 0.0
    return result


def run(args, workdir: Path, database_url: str) -> dict:
    from catalogue import Catalogue

    store_url = (workdir / "store").as_uri()
    home = workdir / "home"
    home.mkdir()
    cat = Catalogue.open(database_url, store_url)
    try:
        cat.migrate()
        synth = Synth()
        began = time.perf_counter()
        seed(cat, synth, 0, args.renders)
        seeded_s = time.perf_counter() - began
        advance_sequences(cat)
        urls = urls_by_kind(synth, sample_ids(cat))
    finally:
        cat.close()
    with gallery_server(database_url, store_url, home) as base:
        load(base, urls, min(args.clients, 8), min(3.0, args.seconds), 2000)  # warm the server and its pool
        alone = load(base, urls, args.clients, args.seconds, args.max_requests)
        print(f"alone: {alone['requests']} requests, {alone['errors']} errors, p95 {alone['p95'] * 1000:.0f} ms",
              file=sys.stderr, flush=True)
        stats = workdir / "ingest.json"
        batch = subprocess.Popen([sys.executable, __file__, "--ingest-child", database_url, store_url, str(args.jobs),
                                  str(args.seconds), str(args.ingest_workers), str(stats)], cwd=REPO)
        try:
            deadline = time.monotonic() + 300
            while not stats.with_suffix(".ready").exists():
                if batch.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the ingest process did not get ready (exit {batch.poll()})")
                time.sleep(0.02)
            stats.with_suffix(".go").touch()
            with_batch = load(base, urls, args.clients, args.seconds, args.max_requests)
            batch.wait(args.seconds + 300)
        finally:
            if batch.poll() is None:
                batch.kill()
    if batch.returncode != 0 or not stats.exists():
        raise RuntimeError(f"the ingest process failed (exit {batch.returncode})")
    ingest = json.loads(stats.read_text())
    print(f"with batch: {with_batch['requests']} requests, {with_batch['errors']} errors, p95 "
          f"{with_batch['p95'] * 1000:.0f} ms; ingested {ingest['ingested']}/{args.jobs}", file=sys.stderr, flush=True)
    return {"alone": alone, "batch": with_batch, "ingest": ingest, "seeded_s": seeded_s}


def advance_sequences(cat) -> None:
    """The seeder gives assets explicit ids; move PostgreSQL's sequence past them so the batch can add more."""
    from sqlalchemy import text

    with cat.transaction() as session:
        session.execute(text("SELECT setval(pg_get_serial_sequence('assets', 'id'), (SELECT max(id) FROM assets))"))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def report(result: dict, args, command: str) -> str:
    alone, batch, ingest = result["alone"], result["batch"], result["ingest"]
    ingest_s = sorted(ingest["ingest_s"]) or [0.0]
    lines = ["## Gallery under load while a batch is ingested (PostgreSQL)", "",
             f"Command (from the repository root): `{command}`  ",
             f"Machine: {datetime.date.today()}, nproc {os.cpu_count()}, load average before the run "
             f"{result['load_before']:.2f}. {args.clients} clients (asyncio, one connection each, no think time) "
             f"against one `linstudio serve` process for {args.seconds:.0f} s per phase, over {args.renders:,} "
             f"seeded renders; latency measured by the clients. The batch: {args.jobs} jobs of 512x512 planned, "
             f"claimed and ingested (thumbnail, objects, intent, row) by {args.ingest_workers} threads of a "
             "separate process, paced over the phase like a farm landing renders.", "",
             "| phase | requests | errors | req/s | p50 | p95 | p99 | max |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, phase in (("alone", alone), ("with the batch", batch)):
        lines.append(f"| {name} | {phase['requests']:,} | {phase['errors']} | {phase['rate']:.1f} | {ms(phase['p50'])} "
                     f"| {ms(phase['p95'])} | {ms(phase['p99'])} | {ms(phase['max'])} |")
    ratio = batch["p95"] / alone["p95"] if alone["p95"] else float("nan")
    lines += ["", f"p95 with the batch / alone: **{ratio:.2f}x**.", "",
              "| request | p50 alone | p95 alone | p50 with batch | p95 with batch |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for kind in KINDS:
        if kind in alone["kinds"] and kind in batch["kinds"]:
            (a50, a95), (b50, b95) = alone["kinds"][kind], batch["kinds"][kind]
            lines.append(f"| {kind} | {ms(a50)} | {ms(a95)} | {ms(b50)} | {ms(b95)} |")
    p50, p95 = percentiles(ingest_s)
    lines += ["", f"Batch: {ingest['ingested']} of {args.jobs} ingested in {ingest['wall_s']:.1f} s "
                  f"({len(ingest['errors'])} errors); one ingest p50 {ms(p50)}, p95 {ms(p95)} (while serving "
                  f"the clients); planning the {args.jobs} jobs {ms(ingest['plan_s'])}.",
              "", "Kinds: newest = the first gallery / API page (where the batch's renders appear); search, gallery "
                  "(filtered and deep pages) and asset as in the gallery bench above. Reading: closed-loop clients "
                  "keep one server process saturated, so latency is mostly time waiting in its queue (about clients "
                  "/ req/s), and the batch shows as somewhat less throughput and a longer tail: its ingests "
                  "(thumbnail, hashing, inserts) share the same two cores. Numbers come from a shared "
                  "2-core machine running the three processes at once (and other engineers' work); read the ratio, "
                  "not the absolutes."]
    for name, phase in (("alone", alone), ("with the batch", batch)):
        if phase["error_samples"]:
            lines.append(f"\nErrors {name}: {', '.join(phase['error_samples'])}")
    if ingest["errors"]:
        lines.append(f"\nIngest errors: {', '.join(ingest['errors'][:5])}")
    return "\n".join(lines) + "\n"


def check_bounds(args) -> None:
    for name, limit in LIMITS.items():
        if getattr(args, name) > limit:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(args, name)}: at most {limit}")
    if args.postgres_url and urlsplit(args.postgres_url.replace("+psycopg", "")).hostname not in ("127.0.0.1",
                                                                                                   "localhost"):
        raise SystemExit("--postgres-url must point at 127.0.0.1: this bench sends traffic to this machine only")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--ingest-child"]:
        database_url, store_url, jobs, seconds, workers, out = argv[1:7]
        ingest_batch(database_url, store_url, int(jobs), float(seconds), int(workers), Path(out))
        return {}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--renders", type=int, default=20000)
    parser.add_argument("--ingest-workers", type=int, default=4)
    parser.add_argument("--max-requests", type=int, default=500_000)
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    check_bounds(args)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="linstudio-web-load-") as tmp, contextlib.ExitStack() as stack:
        url = args.postgres_url or stack.enter_context(throwaway_postgres())
        result = run(args, Path(tmp), url)
    result["load_before"] = load_before
    command = ".venv/bin/python bench/web_load_bench.py" + (" " + shlex.join(argv) if argv else "")
    text = report(result, args, command)
    print(text)
    if not args.no_write:
        update_section("web-load", text, DOC, heading=None)
    failed = result["alone"]["errors"] + result["batch"]["errors"] + len(result["ingest"]["errors"])
    if failed or result["ingest"]["ingested"] != args.jobs:
        raise SystemExit(f"{failed} errors, {result['ingest']['ingested']} of {args.jobs} ingested: see the report")
    return result


if __name__ == "__main__":
    main()
