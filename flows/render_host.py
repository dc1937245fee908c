"""A GPU worker's long-lived render host: models stay loaded between flow runs.

Every Prefect flow run is a fresh process. Without help, each shard would import torch and
diffusers and load its model again: tens of seconds before the first render, on every shard. The
render host is one process per GPU, started by `linstudio worker` beside the Prefect worker; the
flow runs that worker starts find it through LINSTUDIO_RENDER_HOST (a Unix socket path) and send
it their jobs. Prefect still decides what runs where and when (work pools, queues, priorities,
retries); the host only renders — one job record in, PNG bytes and metadata out — so the flow run
keeps claiming, leasing and cataloguing exactly as when it renders in-process.

Protocol: `multiprocessing.connection` over a Unix socket with an HMAC handshake (the key travels
in LINSTUDIO_RENDER_HOST_KEY, inherited only by the worker's own children), pickled tuples:

    ("ping",)                                   -> ("ok", {"pid", "devices", "models"})
    ("render", record, device, dtype, image)    -> ("ok", png_bytes, metadata)
    anything failing                            -> ("error", type name, one-line reason, transient)

One render at a time per host (one GPU). A host that dies mid-job shows up in the flow run as a
transient ConnectionError: Prefect retries the task, and the supervisor has started a new host.
The host reads the model registry once, at its start (`main`), and renders every job with it; a
changed models.yaml reaches it when the supervisor next starts it.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from multiprocessing.connection import Client, Connection, Listener

from flows import engines
from flows.conditioning_inputs import ConditioningInputError
from flows.devices import render_devices
from flows.rendering import render_png
from flows.transient import is_transient, one_line
from linfusion_engine.registry import ModelRegistry
from linstudio_settings import get_settings

log = logging.getLogger("linstudio.render_host")

DEFAULT_MAX_MODELS = 2


class RenderHostUnavailable(ConnectionError):
    """The host could not be reached or died mid-request (transient: the task is retried)."""


class RemoteRenderError(Exception):
    """A render that failed inside the host; subclasses carry the original exception's name."""


_remote_classes: dict[tuple[str, bool], type] = {}


def remote_error(name: str, reason: str, transient: bool) -> Exception:
    """Rebuild a host-side failure under its own type name, so a job's recorded reason reads the
    same (`ValueError: control map is truncated`) whether it rendered in-process or on the host,
    and so `is_transient` still tells a store blink (a ConnectionError) from bad input."""
    key = (name, transient)
    if key not in _remote_classes:
        bases: tuple[type, ...] = (RemoteRenderError,)
        if transient:
            bases += (ConnectionError,)
        if name in _known_errors():  # the flow run's `except`/isinstance checks still see the type
            bases += (_known_errors()[name],)
        _remote_classes[key] = type(name, bases, {"__module__": __name__})
    message = reason.split(": ", 1)[1] if reason.startswith(f"{name}: ") else reason
    return _remote_classes[key](message)


def _known_errors() -> dict[str, type]:
    """The project's own exception types a flow run tells apart, rebuilt as such from the host."""
    return {"ConditioningInputError": ConditioningInputError}


# -- the host process -----------------------------------------------------------------------------


class RenderHost:
    """Serves renders over a Unix socket until stopped; one render at a time, with models from `registry`
    (a `linfusion_engine.registry.ModelRegistry`, the host's for its whole life)."""

    def __init__(self, address: str, authkey: bytes, *, registry, device: str | None = None, dtype: str | None = None,
                 max_models: int = DEFAULT_MAX_MODELS) -> None:
        self.address, self.authkey = address, authkey
        self.registry = registry
        self.device, self.dtype = device, dtype
        self.max_models = max_models
        self._render_lock = threading.Lock()
        self._listener: Listener | None = None
        self.devices: list[str | None] = []

    def start(self) -> None:
        """Bind the socket (owner-only) and find the devices; serving starts with `serve_forever`."""
        if os.path.exists(self.address):
            os.unlink(self.address)  # a stale socket from a host that was killed
        old_umask = os.umask(0o177)
        try:
            self._listener = Listener(self.address, family="AF_UNIX", authkey=self.authkey)
        finally:
            os.umask(old_umask)
        self.devices = render_devices(self.device)

    def preload(self, models: list[str]) -> None:
        """Load `models` now, so the first flow run finds them warm (renders wait meanwhile)."""
        with self._render_lock:
            for model in models:
                for device in self.devices:
                    with engines.engine_for(model, self.registry, device=device, dtype=self.dtype):
                        log.info("preloaded %s on %s", model, device or "auto")

    def serve_forever(self) -> None:
        assert self._listener is not None, "call start() first"
        while True:
            listener = self._listener
            if listener is None:  # stopped between two connections (a refused one, say)
                return
            try:
                conn = listener.accept()
            except OSError:  # closed by stop()
                return
            except Exception as exc:  # a client that failed the handshake: refuse it, keep serving
                log.warning("refused a connection: %s", one_line(exc))
                continue
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _serve_connection(self, conn: Connection) -> None:
        with conn:
            while True:
                try:
                    request = conn.recv()
                    conn.send(self.handle(request))
                except (EOFError, OSError):  # the flow run went away (finished, or killed mid-render)
                    return

    def handle(self, request: tuple) -> tuple:
        """Answer one request tuple (see the module docstring)."""
        try:
            if request[0] == "ping":
                return ("ok", {"pid": os.getpid(), "devices": self.devices, "models": engines.loaded_models()})
            if request[0] == "render":
                _, record, device, dtype, source_image = request
                with self._render_lock:
                    png, metadata = render_png(record, device, dtype if dtype is not None else self.dtype,
                                               source_image=source_image, registry=self.registry)
                    engines.keep_at_most(self.max_models)
                return ("ok", png, metadata)
            raise ValueError(f"unknown render host request {request[0]!r}")
        except Exception as exc:
            return ("error", type(exc).__name__, one_line(exc), is_transient(exc))


# -- the flow run's side ---------------------------------------------------------------------------


class RenderHostClient:
    """A flow run's connection to its worker's render host; safe to share between task threads."""

    def __init__(self, address: str, authkey: bytes) -> None:
        self.address, self.authkey = address, authkey
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def _call(self, request: tuple) -> tuple:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = Client(self.address, family="AF_UNIX", authkey=self.authkey)
                self._conn.send(request)
                reply = self._conn.recv()
            except (OSError, EOFError) as exc:  # host not running, restarting, or died mid-render
                self._drop()
                raise RenderHostUnavailable(f"render host at {self.address} unavailable: {one_line(exc)}") from exc
            except Exception:  # e.g. a failed handshake: do not reuse a half-open connection
                self._drop()
                raise
        if reply[0] == "error":
            _, name, reason, transient = reply
            raise remote_error(name, reason, transient)
        return reply[1:]

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
        self._conn = None

    def ping(self) -> dict:
        """The host's pid, devices and loaded models."""
        return self._call(("ping",))[0]

    def render(self, record: dict, device: str | None, dtype: str | None, source_image=None) -> tuple[bytes, dict]:
        """Same contract as flows.rendering.render_png, rendered by the host."""
        png, metadata = self._call(("render", record, device, dtype, source_image))
        return png, metadata

    def close(self) -> None:
        with self._lock:
            self._drop()


def client_from_settings(settings) -> RenderHostClient | None:
    """The render host this process was started beside (LINSTUDIO_RENDER_HOST), if any."""
    if not settings.render_host:
        return None
    key = settings.render_host_key.get_secret_value() if settings.render_host_key else ""
    return RenderHostClient(settings.render_host, key.encode())


def main(argv: list[str] | None = None) -> None:
    """`python -m flows.render_host`: run a host (normally started by `linstudio worker`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preload", action="append", default=[], help="model to load at start (repeatable)")
    parser.add_argument("--max-models", type=int, default=DEFAULT_MAX_MODELS,
                        help="models kept loaded at once (least recently used are closed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s render-host %(levelname)s %(message)s")
    settings = get_settings()
    if not settings.render_host or not settings.render_host_key:
        raise SystemExit("render host: set LINSTUDIO_RENDER_HOST and LINSTUDIO_RENDER_HOST_KEY (linstudio worker does)")
    host = RenderHost(settings.render_host, settings.render_host_key.get_secret_value().encode(),
                      registry=ModelRegistry.from_settings(settings), device=settings.device, dtype=settings.dtype,
                      max_models=args.max_models)
    host.start()
    log.info("listening on %s (devices %s)", settings.render_host, host.devices)
    # Serve while preloading: pings answer at once, renders queue on the render lock.
    threading.Thread(target=host.preload, args=(args.preload,), name="preload", daemon=True).start()
    host.serve_forever()


if __name__ == "__main__":
    main()
