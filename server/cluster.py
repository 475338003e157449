"""The realtime server on Ray Serve (the `cluster` extra): the very ASGI app of `covo-edge serve` as an ingress
deployment, each replica loading the artifacts once. A Realtime session is one WebSocket connection, and Ray's
proxy keeps a connection on the replica that accepted it, so a conversation never moves.

    serve run cluster.yaml          # or serve deploy, on a running cluster; covo-edge serve --cluster cluster.yaml

where the config's application has `import_path: covo_edge.server.cluster:app_builder` and its `args` are a
`ClusterConfig` (README, "Serve many users"). A replica admits `sessions_per_replica` sessions and refuses the next
with the protocol's `session_limit_reached` (Ray's own limit, `max_ongoing_requests`, is two above it: room for
the refusal and the health and metrics requests, so a full cluster answers instead of queueing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import ray
from ray import serve
from ray.serve import Application
from ray.serve.deployment import Deployment
from ray.serve.metrics import Counter, Gauge, Histogram

from covo_edge.runtime.errors import OptionError

from .metrics import FIRST_AUDIO_BUCKETS
from .protocol import ProtocolError

PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"  # Ray's proxy imports its middlewares from here
DRAIN_POLL_S = 1.0  # how often a replica asks the controller whether it is being stopped


@dataclass
class ClusterConfig:
    """A replica's settings: the `args` of the config's application."""

    artifacts: str
    sessions_per_replica: int = 4
    backend: str = "onnxruntime"
    device: str = "cpu"
    engines: str | None = None
    mode: str = "speech"
    max_batch: int | None = None  # default: sessions_per_replica
    voice: str | None = None
    api_key: str | None = None
    seed: int | None = None
    max_input_seconds: float = 60.0
    idle_timeout: float = 600.0
    min_free_gb: float = 0.5  # on a GPU: below this much free device memory the replica reports unhealthy

    @classmethod
    def from_args(cls, args: dict) -> ClusterConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise OptionError(f"unknown covo-edge cluster args {unknown}: the application's args take "
                              f"{', '.join(sorted(known))}")
        if "artifacts" not in args:
            raise OptionError("the application's args need `artifacts`: the folder `covo-edge export` wrote, on "
                              "every node")
        c = cls(**args)
        if c.sessions_per_replica < 1:
            raise OptionError(f"sessions_per_replica must be at least 1, got {c.sessions_per_replica}")
        return c


class RayMetrics:
    """The server's metrics as Ray Serve metrics: Ray tags each with its application, deployment and replica
    and exports them beside `ray_serve_*` (names gain Ray's `ray_` prefix). Ray forgets a gauge not set for
    two report intervals, so `refresh` sets them again (the replica calls it every second)."""

    def __init__(self):
        self.open = Gauge("covo_sessions_open", description="realtime sessions open on this replica")
        self.turns = Counter("covo_turns", description="responses by final status", tag_keys=("status",))
        self.first_audio = Histogram("covo_first_audio_seconds", boundaries=list(FIRST_AUDIO_BUCKETS),
                                     description="time from the end of the user's turn to the first audio sent")
        self.tokens = Counter("covo_decode_tokens", description="tokens decoded")
        self.speed = Gauge("covo_decode_tokens_per_second", description="decode speed of the last turn")
        self.refusals = Counter("covo_refused", description="connections turned away, by error code",
                                tag_keys=("code",))
        self.open_now, self.last_speed = 0, None

    def refresh(self) -> None:
        self.open.set(self.open_now)
        if self.last_speed is not None:
            self.speed.set(self.last_speed)

    def sessions(self, open_now: int) -> None:
        self.open_now = open_now
        self.open.set(open_now)

    def turn(self, status: str, first_audio: float | None, tokens: int, decode_seconds: float) -> None:
        self.turns.inc(1, tags={"status": status})
        if first_audio is not None:
            self.first_audio.observe(first_audio)
        if tokens:
            self.tokens.inc(tokens)
        if decode_seconds > 0:
            self.last_speed = tokens / decode_seconds
            self.speed.set(self.last_speed)

    def refused(self, code: str) -> None:
        self.refusals.inc(1, tags={"code": code})


@serve.ingress()
class RealtimeReplica:
    """One replica: the model loaded once, the realtime app serving it. Once a second it refreshes its gauges
    and asks whether Ray is stopping it (scale-down, redeploy); then it drains: no new sessions, running
    responses finish within the deployment's graceful shutdown time, sessions close with 1001."""

    def __init__(self, config: dict):
        from covo_edge.runtime import Model

        from .app import ServeOptions, create_app
        from .session import Limits

        c = self.config = ClusterConfig(**config)
        self.model = Model.load(c.artifacts, backend=c.backend, device=c.device, mode=c.mode, engines=c.engines,
                                max_batch=c.max_batch or c.sessions_per_replica)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        limits = Limits(max_input_seconds=c.max_input_seconds, idle_timeout=c.idle_timeout, seed=c.seed)
        self.metrics = RayMetrics()
        self.asgi = create_app(self.model, ServeOptions(max_sessions=c.sessions_per_replica, api_key=c.api_key,
                                                        voice=c.voice, limits=limits, replica=self.replica,
                                                        metrics_sink=self.metrics))
        self.asgi.router.lifespan_context = self._lifespan

    def __serve_build_asgi_app__(self):
        return self.asgi

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        watcher = asyncio.create_task(self._watch())
        yield
        watcher.cancel()

    async def _watch(self) -> None:
        """Ray gives a stopping replica no notice but the controller's view (it waits for the ongoing requests,
        i.e. the open sessions, then kills it): ask once a second, and drain once this replica reads STOPPING or,
        having been listed, is listed no more (a deleted application lists no replicas)."""
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        ctx = serve.get_replica_context()
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        grace = max(0.0, ctx._deployment_config.graceful_shutdown_timeout_s - 3 * DRAIN_POLL_S)
        listed = False
        while True:
            await asyncio.sleep(DRAIN_POLL_S)
            self.metrics.refresh()
            try:
                details = await controller.get_serve_instance_details.remote()
            except ray.exceptions.RayError:  # the controller restarting (Ray restarts it): ask again next time
                continue
            deployment = details["applications"].get(ctx.app_name, {}).get("deployments", {}).get(ctx.deployment, {})
            state = {r["replica_id"]: r["state"] for r in deployment.get("replicas", [])}.get(ctx.replica_id.unique_id)
            if state == "STOPPING" or (listed and state is None):
                return await self.asgi.state.realtime.drain(grace)
            listed = state is not None

    def check_health(self) -> None:
        """Ray's health check: one embedding lookup through the backend (a dead device or session raises), and on
        a GPU enough free memory for the next conversation (`min_free_gb`)."""
        import numpy as np

        self.model.backend.run("embed_tokens", {"input_ids": np.zeros((1, 1), np.int64)})
        if self.config.device != "cpu":
            free = gpu_free_gb()
            if free is not None and free < self.config.min_free_gb:
                raise RuntimeError(f"{free:.2f} GB of GPU memory free, below min_free_gb={self.config.min_free_gb}")


def gpu_free_gb() -> float | None:
    """Free memory of this replica's GPU (the first of CUDA_VISIBLE_DEVICES, as Ray assigned it) by nvidia-smi;
    None where there is no nvidia-smi to ask."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
    out = subprocess.run([smi, "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", gpu],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return float(out.split()[0]) * 2**20 / 1e9


class ReplicaLoss:
    """ASGI middleware in Ray's proxy (`proxy_middlewares`). When the replica behind a WebSocket dies, Ray's
    proxy ends the connection without a close frame; here the client gets the protocol's `error` event
    (`replica_lost`) and close code 1011 instead, so it knows to start a new session."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        state = {"open": False}

        async def watched_receive():
            message = await receive()
            if message["type"] == "websocket.disconnect":
                state["open"] = False
            return message

        async def watched_send(message):
            if message["type"] == "websocket.accept":
                state["open"] = True
            elif message["type"] == "websocket.close":
                state["open"] = False
            await send(message)

        try:
            await self.app(scope, watched_receive, watched_send)
        finally:
            if state["open"]:
                lost = ProtocolError("the server replica holding this session stopped; the conversation is lost: "
                                     "open a new session", code="replica_lost", type="server_error")
                with contextlib.suppress(Exception):  # the client may be gone too
                    await send({"type": "websocket.send", "text": json.dumps(lost.event())})
                    await send({"type": "websocket.close", "code": 1011, "reason": "replica_lost"})


def proxy_middlewares() -> list:
    """What Ray's proxy imports through RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH (set it where Ray starts)."""
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLoss)]


def realtime_deployment(c: ClusterConfig) -> Deployment:
    """The deployment with the options the config's `deployments` entry may override (replicas, resources)."""
    return serve.deployment(RealtimeReplica, name="covo-edge", max_ongoing_requests=c.sessions_per_replica + 2,
                            graceful_shutdown_timeout_s=30)


def app_builder(args: dict) -> Application:
    """`import_path` of the Serve config: its application's `args` -> the application."""
    c = ClusterConfig.from_args(args)
    return realtime_deployment(c).bind(asdict(c))


def run_cluster(config: str | Path) -> int:
    """`covo-edge serve --cluster CONFIG`: Ray's own `serve run` on this machine (a local Ray started and
    stopped with it), after checking that the config names this app and its artifacts exist. SIGTERM (docker
    stop, systemd) and Ctrl-C first delete the applications (their replicas drain, sessions close with 1001),
    then stop Ray; a second one stops Ray at once."""
    import yaml

    path = Path(config)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise OptionError(f"cannot read the cluster config {path}: {e}") from None
    apps = (data or {}).get("applications") or []
    ours = [a for a in apps if a.get("import_path") == f"{__name__}:app_builder"]
    if not ours:
        raise OptionError(f"{path} has no application with import_path {__name__}:app_builder (README, "
                          "\"Serve many users\", has one)")
    for a in ours:
        c = ClusterConfig.from_args(a.get("args") or {})
        if not (Path(c.artifacts) / "manifest.json").is_file():
            raise OptionError(f"{c.artifacts} holds no artifacts (manifest.json): export them there first")
    os.environ.setdefault(PROXY_CALLBACK_ENV, f"{__name__}:proxy_middlewares")
    cli = Path(sys.executable).with_name("serve")
    child = subprocess.Popen([str(cli), "run", str(path)], start_new_session=True,  # signals come through us
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even if ours ignores it
    stop = threading.Event()

    def on_signal(*_):
        if stop.is_set():  # a second Ctrl-C: no more waiting
            child.send_signal(signal.SIGINT)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while child.poll() is None:
        if stop.wait(0.5):
            _delete_applications([a.get("name", "default") for a in ours])
            child.send_signal(signal.SIGINT)
            break
    return child.wait()


def _delete_applications(names: list[str]) -> None:
    """Delete our applications before Ray stops: their replicas drain while Ray's proxy still carries their
    sessions (Ray's own shutdown stops the proxy first, dropping every connection)."""
    try:
        ray.init(address="auto", log_to_driver=False, logging_level="ERROR")
        for name in names:
            serve.delete(name)
    except Exception as e:  # noqa: BLE001 (Ray not up yet, or already gone: nothing to drain)
        print(f"covo-edge: no drain ({type(e).__name__}: {e}); stopping Ray", file=sys.stderr)
    finally:
        ray.shutdown()
