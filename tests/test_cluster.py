"""The realtime server on Ray Serve: a local Ray cluster (2 CPUs, no dashboard) with two replicas of the tiny
model behind Ray's HTTP proxy, talked to with the official openai SDK; every session equals the runtime's own
conversation, sessions spread over both replicas, and a full cluster refuses with the protocol's error."""

import asyncio
import contextlib
from dataclasses import asdict

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import needs
from serving import Client, assert_same_audio, free_port, question, runtime_replies, sdk_manual_turns, spoken

needs("ray", "cluster")
needs("torch", "export")  # the tiny artifacts are exported with torch

TOKENS = 24
SESSIONS_PER_REPLICA = 3


@pytest.fixture(scope="module")
def cluster(tiny_art):
    import ray
    from covo_edge.server.cluster import ClusterConfig, realtime_deployment
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    c = ClusterConfig(artifacts=str(tiny_art), sessions_per_replica=SESSIONS_PER_REPLICA, seed=0)
    serve.run(realtime_deployment(c).options(num_replicas=2).bind(asdict(c)), name="covo-edge", route_prefix="/")
    yield f"127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


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
