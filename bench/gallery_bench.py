"""Gallery benchmark: does a page cost the same at 100k renders as at 1k? And does it hold 50 clients?

For each backend (SQLite; PostgreSQL in a throwaway cluster, or --postgres-url), it seeds a
synthetic catalogue through the real schema (migrations, triggers, FTS) — rows only, no image
objects, since no measured request reads one — then measures p50/p95 server-side latency of
- search: full text over prompts and tags (a random vocabulary word, Zipf-distributed like real prompts),
- gallery: filtered pages (team + status, tag, model + size, project), first and a deep (cursor) page,
- asset: the render page (siblings, lineage, reviews, re-render jobs),
at the small size, then grows the same catalogue to the large size and measures again. Finally
`--clients` concurrent HTTP clients hammer a real uvicorn server for `--load-seconds`, counting
errors. Requests go through FastAPI's TestClient for the latency part (no network noise).

Writes its report between the `<!-- bench:gallery -->` markers of docs/benchmarks.md.

    .venv/bin/python bench/gallery_bench.py [--sizes 1000,100000] [--backends sqlite,postgres]
        [--requests 200] [--clients 50] [--load-seconds 30] [--postgres-url URL] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import os
import random
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, also when loaded by path
from benchdocs import update_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a plain script from a checkout

DOC = REPO / "docs" / "benchmarks.md"
TEAMS = ["film", "games", "ads", "series", "vfx"]
MODELS = ["sd15-house", "sdxl-base", "sd21-base", "tiny-sd15"]
SIZES = [(512, 512), (768, 768), (1024, 1024), (1024, 576), (2048, 2048), (4096, 4096)]
STATUSES = [None] * 6 + ["approved", "approved", "rejected", "changes_requested"]
EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
# What the numbers mean (checked with EXPLAIN on both backends), printed under the table.
READING = (
    'Reading: every query is an index range that stops after one page (61 rows), so cost follows the '
    'page, not the catalogue. Much of the growth from 1k to 100k is that filtered pages at 1k are often '
    'partial (a tag or team+status has fewer than 60 renders there), while at 100k every page is full; a '
    'check per filter kind at 1k vs 30k (SQLite) showed p50 within 1-2x for each. Full-text search on '
    'SQLite walks FTS5 newest-first and stops after a page; on PostgreSQL the planner picks between the '
    'GIN index (rare words) and a newest-first scan (common words). Numbers come from a shared 2-core '
    "machine (four engineers' tests and builds running): single runs differ by up to 2x, so read the "
    'ratios as rough.'
)


def vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "qua", "bri", "dor", "fen", "gal", "hol"]
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(words)


class Synth:
    """Deterministic synthetic catalogue rows: prompts drawn Zipf-like from a vocabulary."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.words = vocabulary(self.rng)
        self.weights = [1 / (rank + 1) for rank in range(len(self.words))]
        self.tags = self.words[:200]

    def prompt(self) -> str:
        return " ".join(self.rng.choices(self.words, self.weights, k=10))

    def query_word(self) -> str:
        return self.rng.choices(self.words, self.weights, k=1)[0]


def seed(cat, synth: Synth, start: int, stop: int, batch: int = 5000) -> None:
    """Insert renders number start..stop-1 (with their submissions, assets and jobs) in bulk."""
    from sqlalchemy import insert, text

    from catalogue.ids import new_ulid
    from catalogue.models import Asset, Job, Render, Submission

    rng = synth.rng
    for lo in range(start, stop, batch):
        hi = min(stop, lo + batch)
        subs, assets, jobs, renders = [], [], [], []
        for n in range(lo, hi):
            # One render per simulated 10 s: ids are ULIDs in creation order, like real runs.
            made = EPOCH + datetime.timedelta(seconds=10 * n)
            team = TEAMS[n % len(TEAMS)]
            project = f"{team}-p{(n // 7) % 8}"
            if n % 500 == 0:
                subs.append({"id": f"S{n:025d}", "team": team, "project": project, "manifest_path": f"{project}.yaml",
                             "manifest_sha256": "0" * 64, "job_count": 500, "created_at": made})
            asset_pk = n // 6 + 1  # six renders (seeds, sizes) per asset
            if n % 6 == 0:  # an asset's first render creates it (even when an earlier call seeded it)
                assets.append({"id": asset_pk, "team": team, "project": project, "asset_id": f"asset{asset_pk}",
                               "created_at": made})
            key = hashlib.sha256(f"job{n}".encode()).hexdigest()
            width, height = SIZES[rng.randrange(len(SIZES))]
            model = MODELS[rng.randrange(len(MODELS))]
            prompt = synth.prompt()
            tags = rng.sample(synth.tags, 3)
            record = {"key": key, "team": team, "project": project, "asset_id": f"asset{asset_pk}", "prompt": prompt,
                      "seed": n, "width": width, "height": height, "model": model, "tags": tags}
            jobs.append({"key": key, "submission_id": f"S{(n // 500) * 500:025d}", "asset_pk": asset_pk, "state": "done",
                         "attempts": 1, "record": record, "created_at": made, "updated_at": made, "finished_at": made})
            parent = renders[-1]["id"] if n % 6 and renders and rng.random() < 0.3 else None
            renders.append({"id": new_ulid(made), "job_key": key, "submission_id": f"S{(n // 500) * 500:025d}",
                            "asset_pk": asset_pk, "team": team, "project": project, "asset_id": f"asset{asset_pk}",
                            "prompt": prompt, "negative_prompt": "", "seed": n, "width": width, "height": height,
                            "steps": 30, "guidance": 7.0, "scheduler": "ddim", "model": model, "model_identity": None,
                            "engine": {}, "timings": {}, "tags": tags, "record": record, "worker": "bench",
                            "object_key": f"renders/{key}.png", "object_uri": f"file:///x/{key}.png",
                            "thumb_key": f"thumbs/{key}.webp", "thumb_uri": f"file:///x/{key}.webp",
                            "sha256": key[:64], "size_bytes": 1, "thumb_sha256": key[:64],
                            "parent_render_id": parent, "created_at": made,
                            "review_status": STATUSES[rng.randrange(len(STATUSES))]})
        with cat.transaction() as session:
            if subs:
                session.execute(insert(Submission), subs)
            if assets:
                session.execute(insert(Asset), assets)
            session.execute(insert(Job), jobs)
            session.execute(insert(Render), renders)
    with cat.transaction() as session:
        session.execute(text("ANALYZE"))  # fresh planner statistics, as a maintained database has


def request_mix(synth: Synth, render_ids: list[str], cursor_of) -> dict[str, list[str]]:
    """URLs per measured kind, chosen at random (same recipe at every size)."""
    rng = synth.rng
    return {
        "search": [f"/api/renders?q={synth.query_word()}" for _ in range(100)]
        + [f"/?q={synth.query_word()}+{synth.query_word()}" for _ in range(100)],
        "gallery": [rng.choice([
            f"/?team={rng.choice(TEAMS)}&status=approved",
            f"/api/renders?tag={rng.choice(synth.tags)}",
            f"/api/renders?model={rng.choice(MODELS)}&size={'x'.join(map(str, rng.choice(SIZES)))}",
            f"/?project={rng.choice(TEAMS)}-p{rng.randrange(8)}",
            f"/api/renders?team={rng.choice(TEAMS)}&cursor={cursor_of(rng.choice(render_ids))}",
        ]) for _ in range(200)],
        "asset": [f"/renders/{rng.choice(render_ids)}" for _ in range(200)],
    }


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def measure(client, urls: list[str], count: int) -> tuple[float, float]:
    timings = []
    for url in (urls * (count // len(urls) + 1))[:count]:
        started = time.perf_counter()
        response = client.get(url)
        timings.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}: {response.text[:200]}")
    return percentiles(timings)


def sample_ids(cat, count: int = 300) -> list[str]:
    from sqlalchemy import select

    from catalogue.models import Render

    with cat.transaction() as session:
        all_ids = session.scalars(select(Render.id).order_by(Render.id)).all()
    return random.Random(3).sample(list(all_ids), min(count, len(all_ids)))


def load(app, urls: list[str], clients: int, seconds: float) -> dict:
    """`clients` threads, each with its own HTTP connection, against a real uvicorn server."""
    import httpx
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", backlog=256))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    stop = time.monotonic() + seconds
    results = {"requests": 0, "errors": 0, "error_samples": [], "latencies": []}
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            while time.monotonic() < stop:
                url = rng.choice(urls)
                started = time.perf_counter()
                try:
                    status = http.get(url).status_code
                    error = None if status == 200 else f"HTTP {status} {url}"
                except Exception as exc:  # a refused or dropped connection is an error too
                    error = f"{type(exc).__name__} {url}"
                with lock:
                    results["requests"] += 1
                    results["latencies"].append(time.perf_counter() - started)
                    if error:
                        results["errors"] += 1
                        if len(results["error_samples"]) < 5:
                            results["error_samples"].append(error)

    workers = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    server.should_exit = True
    thread.join(10)
    results["p50"], results["p95"] = percentiles(results["latencies"] or [0.0])
    results["rate"] = results["requests"] / seconds
    del results["latencies"]
    return results


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL cluster in a temp folder on a free port (the recipe in tests/services.py), removed after."""
    bindir = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1])
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    run = Path(tempfile.mkdtemp(prefix="linstudio-bench-pg-"))
    run.chmod(0o755)
    pgdata = run / "pgdata"
    pgdata.mkdir(mode=0o700)
    if as_pg:
        shutil.chown(pgdata, "postgres", "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(pgdata), "-U", "postgres", "-A", "trust",
                        "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"], check=True, capture_output=True)
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(pgdata), "-l", str(pgdata / "server.log"), "-w",
                        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={pgdata} "
                              "-c fsync=off -c max_connections=200", "start"], check=True, capture_output=True)
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE bench")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/bench"
    finally:
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(run, ignore_errors=True)


def run_backend(backend: str, database_url: str, sizes: list[int], requests: int, clients: int,
                load_seconds: float, workdir: Path) -> dict:
    from fastapi.testclient import TestClient

    from catalogue import Catalogue
    from catalogue.search import encode_cursor
    from catalogue.web import create_app
    from linstudio_settings import Settings

    cat = Catalogue.open(database_url, (workdir / "store").as_uri())
    cat.migrate()
    settings = Settings(home=workdir / "home", secret_key="bench-secret-key-0123456789")
    app = create_app(cat, settings)
    synth = Synth()
    out = {"backend": backend, "sizes": {}, "seed_seconds": {}}
    made = 0
    try:
        with TestClient(app) as client:
            for size in sizes:
                started = time.perf_counter()
                seed(cat, synth, made, size)
                out["seed_seconds"][size] = time.perf_counter() - started
                made = size
                mix = request_mix(synth, sample_ids(cat), encode_cursor)
                measure(client, mix["search"][:20], 20)  # warm caches and the connection pool
                out["sizes"][size] = {kind: measure(client, urls, requests) for kind, urls in mix.items()}
        if clients:
            mix = request_mix(synth, sample_ids(cat), encode_cursor)
            out["load"] = load(app, mix["search"] + mix["gallery"] + mix["asset"], clients, load_seconds)
    finally:
        cat.close()
    return out


def report(results: list[dict], sizes: list[int], clients: int, load_seconds: float, command: str) -> str:
    small, large = sizes[0], sizes[-1]
    lines = ["## Gallery: search, filtered pages and the asset page vs catalogue size", "",
             f"Command (from the repository root): `{command}`  ",
             f"Machine: {datetime.date.today()}, nproc {os.cpu_count()}, load average before the run "
             f"{os.getloadavg()[0]:.2f}. Server-side latency through FastAPI's TestClient (one client, "
             "no network); synthetic rows through the real schema (migrations, triggers, FTS), no image objects.",
             "",
             f"| backend | request | p50 @ {small:,} | p95 @ {small:,} | p50 @ {large:,} | p95 @ {large:,} | "
             f"p95 ratio |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for result in results:
        for kind in ("search", "gallery", "asset"):
            a50, a95 = result["sizes"][small][kind]
            b50, b95 = result["sizes"][large][kind]
            lines.append(f"| {result['backend']} | {kind} | {a50 * 1000:.1f} ms | {a95 * 1000:.1f} ms | "
                         f"{b50 * 1000:.1f} ms | {b95 * 1000:.1f} ms | {b95 / a95:.2f}x |")
    lines += ["", "Seeding (bulk inserts, triggers and indexes included): " + "; ".join(
        f"{r['backend']} {large:,} renders in {sum(r['seed_seconds'].values()):.0f} s" for r in results), ""]
    lines += [READING, ""]
    if clients:
        lines += [f"Load: {clients} concurrent HTTP clients for {load_seconds:.0f} s against uvicorn, at "
                  f"{large:,} renders (mixed search, gallery and asset pages).", "",
                  "| backend | requests | errors | req/s | p50 | p95 |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for result in results:
            load_result = result["load"]
            lines.append(f"| {result['backend']} | {load_result['requests']:,} | {load_result['errors']} | "
                         f"{load_result['rate']:.1f} | {load_result['p50'] * 1000:.0f} ms | "
                         f"{load_result['p95'] * 1000:.0f} ms |")
            if load_result["error_samples"]:
                lines.append(f"\nErrors on {result['backend']}: {', '.join(load_result['error_samples'])}")
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    update_section("gallery", text, DOC)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="linstudio-gallery-bench-") as tmp:
        for backend in args.backends.split(","):
            workdir = Path(tmp) / backend
            workdir.mkdir()
            with contextlib.ExitStack() as stack:
                if backend == "sqlite":
                    url = f"sqlite:///{workdir / 'catalogue.db'}"
                else:
                    url = args.postgres_url or stack.enter_context(throwaway_postgres())
                result = run_backend(backend, url, sizes, args.requests, args.clients, args.load_seconds, workdir)
            results.append(result)
            print(f"{backend}: {result['sizes']} load={result.get('load')}", file=sys.stderr, flush=True)
    command = ".venv/bin/python bench/gallery_bench.py" + (" " + shlex.join(argv if argv is not None else sys.argv[1:])
                                                           if (argv if argv is not None else sys.argv[1:]) else "")
    text = report(results, sizes, args.clients, args.load_seconds, command)
    print(text)
    if not args.no_write:
        write_section(text)
    return results


if __name__ == "__main__":
    main()
