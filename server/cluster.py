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

import os
import socket
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ray import serve
from ray.serve import Application
from ray.serve.deployment import Deployment

from covo_edge.runtime.errors import OptionError


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


@serve.ingress()
class RealtimeReplica:
    """One replica: the model loaded once, the realtime app serving it."""

    def __init__(self, config: dict):
        from covo_edge.runtime import Model

        from .app import ServeOptions, create_app
        from .session import Limits

        c = ClusterConfig(**config)
        self.model = Model.load(c.artifacts, backend=c.backend, device=c.device, mode=c.mode, engines=c.engines,
                                max_batch=c.max_batch or c.sessions_per_replica)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        limits = Limits(max_input_seconds=c.max_input_seconds, idle_timeout=c.idle_timeout, seed=c.seed)
        self.asgi = create_app(self.model, ServeOptions(max_sessions=c.sessions_per_replica, api_key=c.api_key,
                                                        voice=c.voice, limits=limits, replica=self.replica))

    def __serve_build_asgi_app__(self):
        return self.asgi

    def check_health(self) -> None:
        """Ray's health check: one embedding lookup through the backend (a dead device or session raises)."""
        import numpy as np

        self.model.backend.run("embed_tokens", {"input_ids": np.zeros((1, 1), np.int64)})


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
    stopped with it), after checking that the config names this app and its artifacts exist."""
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
    cli = Path(sys.executable).with_name("serve")
    os.execv(cli, [str(cli), "run", str(path)])
