"""The realtime server on Ray Serve: a local Ray cluster (2 CPUs, no dashboard) with two replicas of the tiny
model behind Ray's HTTP proxy, talked to with the official openai SDK; every session equals the runtime's own
conversation, sessions spread over both replicas, a full cluster refuses with the protocol's error, the replicas'
metrics reach Ray's Prometheus export, a killed replica's sessions hear so and Ray replaces it, a redeploy drains."""

import asyncio
import contextlib
import os
import re
import signal
import threading
import time
import urllib.request
from dataclasses import asdict, replace

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import needs
from serving import (
    Client, assert_same_audio, free_port, question, replica_pid, runtime_replies, sdk_manual_turns, spoken, wait_for,
)

needs("ray", "cluster")
needs("torch", "export")  # the tiny artifacts are exported with torch

TOKENS = 24
SESSIONS_PER_REPLICA = 3
GRACE_S = 20  # the deployment's graceful shutdown time in these tests


@pytest.fixture(scope="module")
def ray_cluster(tiny_art, monkeypatch_module):
    """Ray on this machine with the proxy middleware (as `covo-edge serve --cluster` sets it) and its metrics
    exported every half second on a port of ours: (host:port of the proxy, metrics port, the config)."""
    import ray
    from covo_edge.server.cluster import PROXY_CALLBACK_ENV, ClusterConfig
    from ray import serve

    monkeypatch_module.setenv(PROXY_CALLBACK_ENV, "covo_edge.server.cluster:proxy_middlewares")
    monkeypatch_module.setenv("RAY_metrics_report_interval_ms", "500")
    metrics_port, port = free_port(), free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _metrics_export_port=metrics_port)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    c = ClusterConfig(artifacts=str(tiny_art), sessions_per_replica=SESSIONS_PER_REPLICA, seed=0)
    deploy(c)
    yield f"127.0.0.1:{port}", metrics_port, c
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    return ray_cluster[0]


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def deploy(c) -> None:
    """`serve.run`, which returns once the application runs."""
    from covo_edge.server.cluster import realtime_deployment
    from ray import serve

    d = realtime_deployment(c).options(num_replicas=2, graceful_shutdown_timeout_s=GRACE_S)
    serve.run(d.bind(asdict(c)), name="covo-edge", route_prefix="/")


def replicas() -> list[dict]:
    """The controller's view of our deployment's replicas (replica_id, state, pid, ...)."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    return details["applications"]["covo-edge"]["deployments"]["covo-edge"]["replicas"]


@pytest.fixture(scope="module")
def model(tiny_art):
    from covo_edge.runtime import Model

    return Model.load(tiny_art)


def test_six_sessions_through_the_proxy_continue_their_own_conversations_on_both_replicas(cluster, model):
    """Six sessions open at once with the official SDK (connected one after another: Ray's router balances a
    burst of simultaneous connections only approximately, README), two manual turns each, all talking at the
    same time: each session's second turn continues its own conversation (both turns equal a local
    conversation's, same seed), and both replicas served."""
    from openai import AsyncOpenAI

    qs = [[question(1.0 + 0.1 * k, 2 * k), question(0.8, 2 * k + 1)] for k in range(6)]

    async def everyone():
        client = AsyncOpenAI(api_key="local", base_url=f"http://{cluster}/v1")
        async with contextlib.AsyncExitStack() as stack:
            conns = []
            for _ in range(6):
                conns.append(await stack.enter_async_context(client.realtime.connect(model="covo-audio-chat")))
                assert (await conns[-1].recv()).type == "session.created"
            replicas = [c._connection.response.headers["x-covo-replica"] for c in conns]  # noqa: SLF001 (handshake)
            return replicas, await asyncio.gather(*(sdk_manual_turns(c, qs[k], TOKENS) for k, c in enumerate(conns)))

    replicas, results = asyncio.run(everyone())
    assert sorted(replicas.count(r) for r in set(replicas)) == [3, 3]  # spread over both replicas
    for k, turns in enumerate(results):
        for events, reply in zip(turns, runtime_replies(model, qs[k], TOKENS), strict=True):
            text, audio = spoken(events)
            assert text == reply.text and len(text) > 0
            assert_same_audio(audio, reply.audio)


def test_a_full_cluster_refuses_the_next_session_with_the_protocols_error(cluster):
    """Both replicas hold their three sessions: the seventh connection gets `session_limit_reached` and a
    close, not a hang; once one closes, a new session is admitted."""
    clients = [Client(f"ws://{cluster}/v1/realtime") for _ in range(6)]
    try:
        replicas = [c.ws.response.headers["x-covo-replica"] for c in clients]
        assert sorted(replicas.count(r) for r in set(replicas)) == [3, 3]
        extra = Client.__new__(Client)  # the first event is the refusal, not session.created
        extra.ws = connect(f"ws://{cluster}/v1/realtime", open_timeout=30)
        refusal = extra.recv()
        assert refusal["type"] == "error" and refusal["error"]["code"] == "session_limit_reached"
        with pytest.raises(ConnectionClosed):
            extra.ws.recv(timeout=30)
        assert extra.ws.close_code == 1008
    finally:
        for c in clients:
            c.close()
    again = Client(f"ws://{cluster}/v1/realtime")
    assert again.created["type"] == "session.created"
    again.close()


def test_the_replicas_metrics_reach_rays_prometheus_export(ray_cluster):
    """After the sessions above (12 turns over two replicas, one refusal), Ray's own metrics export carries our
    series per replica: turns, first-audio latency, decoded tokens, open sessions, refused connections."""
    _, port, _ = ray_cluster

    def scrape():
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        series = {}
        for line in text.splitlines():
            m = re.match(r"(ray_covo_\w+)\{(.*)\} (\S+)$", line)
            if m:
                tags = dict(re.findall(r'(\w+)="([^"]*)"', m[2]))
                series.setdefault(m[1], []).append((tags, float(m[3])))
        turns, refused = series.get("ray_covo_turns_total", []), series.get("ray_covo_refused_total", [])
        return series if sum(v for _, v in turns) >= 12 and refused else None

    series = wait_for(scrape, 60, "12 turns and a refusal in Ray's metrics")
    turns = series["ray_covo_turns_total"]
    assert sum(v for _, v in turns) == 12 and len({t["replica"] for t, _ in turns}) == 2  # per replica
    assert {t["deployment"] for t, _ in turns} == {"covo-edge"}
    assert sum(v for _, v in series["ray_covo_first_audio_seconds_count"]) == 12
    assert sum(v for _, v in series["ray_covo_decode_tokens_total"]) >= 12 * TOKENS
    assert all(v > 0 for _, v in series["ray_covo_decode_tokens_per_second"])
    refused = [(t, v) for t, v in series["ray_covo_refused_total"] if t["code"] == "session_limit_reached"]
    assert sum(v for _, v in refused) == 1
    assert len(series["ray_covo_sessions_open"]) == 2


def test_a_killed_replicas_sessions_hear_so_and_ray_replaces_it(cluster):
    """SIGKILL the process of the replica holding a session: the client gets the protocol's error event
    (`replica_lost`) and close code 1011 through Ray's proxy, a new session lands on the other replica, and Ray
    brings a replacement up."""
    victim = Client(f"ws://{cluster}/v1/realtime")
    pid = replica_pid(victim)
    os.kill(pid, signal.SIGKILL)
    lost = victim.recv(timeout=60)
    assert lost["type"] == "error" and lost["error"]["code"] == "replica_lost", lost
    assert "new session" in lost["error"]["message"]
    with pytest.raises(ConnectionClosed):
        victim.ws.recv(timeout=30)
    assert victim.ws.close_code == 1011
    survivor = Client(f"ws://{cluster}/v1/realtime")
    assert survivor.created["type"] == "session.created" and replica_pid(survivor) != pid
    survivor.close()
    wait_for(lambda: sorted(r.get("pid") != pid for r in replicas() if r["state"] == "RUNNING") == [True, True], 120,
             "a replacement replica running beside the survivor")


class Listener:
    """A raw client whose events a thread collects with their arrival times until the server closes."""

    def __init__(self, url: str):
        self.client, self.events, self.closed = Client(url), [], threading.Event()
        self.pid = replica_pid(self.client)
        self.client.manual(max_output_tokens=400)
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self):
        with contextlib.suppress(ConnectionClosed):
            while True:
                self.events.append((time.monotonic(), self.client.recv(timeout=120)))
        self.closed.set()

    def kinds(self) -> list[str]:
        return [e["type"] for _, e in self.events]


def test_a_redeploy_lets_the_running_responses_finish_then_closes_with_1001(ray_cluster):
    """A response runs on each replica when a redeploy (new args) replaces them: each replica stops admitting,
    its response finishes (not cancelled), then its session closes with 1001; new sessions land on the new
    replicas. Ray rolls one replica at a time, so the first to stop is stopped while its response runs."""
    cluster, _, c = ray_cluster
    old = {r.get("pid") for r in replicas()}
    sessions = [Listener(f"ws://{cluster}/v1/realtime") for _ in range(2)]
    assert {s.pid for s in sessions} == old  # one on each replica
    for k, s in enumerate(sessions):
        s.client.ask(question(1.0, 7 + k))
    wait_for(lambda: all("response.output_audio.delta" in s.kinds() for s in sessions), 60, "both replies' audio")
    redeploy = threading.Thread(target=deploy, args=(replace(c, idle_timeout=c.idle_timeout + 1),), daemon=True)
    redeploy.start()
    stopped = {}

    def first_stopping():
        stopped.update({r["pid"]: time.monotonic() for r in replicas() if r["state"] == "STOPPING"})
        return stopped

    wait_for(first_stopping, 60, "a replica stopping")
    first = next(s for s in sessions if s.pid in stopped)
    for s in sessions:
        assert s.closed.wait(GRACE_S + 60)
        assert "error" not in s.kinds(), s.events
        response = next(e for _, e in s.events if e["type"] == "response.done")["response"]
        assert response["status"] == "completed" or response["status_details"]["reason"] == "max_output_tokens"
        assert s.client.ws.close_code == 1001
    finished = next(t for t, e in first.events if e["type"] == "response.done")
    assert stopped[first.pid] < finished  # its response was still running when the drain began, and it finished
    redeploy.join(timeout=120)
    assert not redeploy.is_alive()
    again = Client(f"ws://{cluster}/v1/realtime")
    assert again.created["type"] == "session.created" and replica_pid(again) not in old
    again.close()


def test_on_a_gpu_the_health_check_fails_below_the_free_memory_floor(tiny_art, tmp_path, monkeypatch):
    """`check_health` asks nvidia-smi about the replica's GPU (the first Ray assigned it) and fails, naming the
    numbers, below `min_free_gb`; a stand-in nvidia-smi answers here (no GPU on this machine)."""
    from types import SimpleNamespace

    from covo_edge.runtime import Model
    from covo_edge.server.cluster import ClusterConfig, RealtimeReplica, gpu_free_gb

    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$3" = "-i" ] && [ "$4" = "GPU-b" ] && echo 300 && exit 0\nexit 9\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-b,GPU-c")
    assert gpu_free_gb() == pytest.approx(300 * 2**20 / 1e9)
    replica = SimpleNamespace(model=Model.load(tiny_art, mode="text"))
    replica.config = ClusterConfig(artifacts=str(tiny_art), device="cuda", min_free_gb=0.2)
    RealtimeReplica.check_health(replica)
    replica.config = replace(replica.config, min_free_gb=0.5)
    with pytest.raises(RuntimeError, match="0.31 GB of GPU memory free, below min_free_gb=0.5"):
        RealtimeReplica.check_health(replica)


def test_a_config_that_is_not_ours_or_lacks_artifacts_is_refused_before_ray_starts(tmp_path, capsys):
    """`covo-edge serve --cluster CONFIG` checks the config first: one line naming the problem, status 2."""
    from conftest import cli
    from covo_edge.runtime.errors import OptionError
    from covo_edge.server.cluster import ClusterConfig

    with pytest.raises(OptionError, match="unknown covo-edge cluster args \\['sessions'\\]"):
        ClusterConfig.from_args({"artifacts": "a", "sessions": 3})
    with pytest.raises(OptionError, match="need `artifacts`"):
        ClusterConfig.from_args({})
    other = tmp_path / "other.yaml"
    other.write_text("applications:\n  - name: x\n    import_path: somewhere:app\n")
    rc, _, err = cli(capsys, "serve", "--cluster", other)
    assert rc == 2 and "no application with import_path covo_edge.server.cluster:app_builder" in err
    empty = tmp_path / "empty.yaml"
    empty.write_text("applications:\n  - name: covo-edge\n    import_path: covo_edge.server.cluster:app_builder\n"
                     f"    args: {{artifacts: {tmp_path / 'nothing'}}}\n")
    rc, _, err = cli(capsys, "serve", "--cluster", empty)
    assert rc == 2 and "holds no artifacts" in err
    rc, _, err = cli(capsys, "serve")
    assert rc == 2 and "--cluster CONFIG" in err
