"""`covo-edge serve --cluster CONFIG` as a user runs it (Ray's `serve run` under it, a local Ray of its own; after
test_cluster.py, whose Ray is gone by then): a replica killed under a session is reported by Ray's proxy, and
SIGTERM (docker stop, systemd) drains: the running response finishes, the session closes with 1001, Ray stops."""

import os
import signal
import subprocess
import sys

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import needs
from serving import Client, Server, free_port, question, replica_pid, wait_for

needs("ray", "cluster")
needs("torch", "export")  # the tiny artifacts are exported with torch


def test_serve_cluster_reports_a_lost_replica_and_drains_on_sigterm(tiny_art, tmp_path):
    port = free_port()
    config = tmp_path / "cluster.yaml"
    config.write_text(f"""\
http_options: {{host: 127.0.0.1, port: {port}}}
applications:
  - name: covo-edge
    route_prefix: /
    import_path: covo_edge.server.cluster:app_builder
    args: {{artifacts: {tiny_art}, sessions_per_replica: 2}}
    deployments:
      - name: covo-edge
        num_replicas: 1
        graceful_shutdown_timeout_s: 15
""")
    server = Server(None, "--cluster", str(config), log=tmp_path / "serve.log", port=port)
    try:
        url = f"ws://127.0.0.1:{port}/v1/realtime"
        victim = Client(url)
        os.kill(replica_pid(victim), signal.SIGKILL)
        assert victim.recv(timeout=60)["error"]["code"] == "replica_lost"  # the proxy middleware is on
        with pytest.raises(ConnectionClosed):
            victim.ws.recv(timeout=30)
        assert victim.ws.close_code == 1011
        def connected():
            try:
                return Client(url, open_timeout=60)
            except (OSError, InvalidStatus):  # refused while no replica runs
                return None

        client = wait_for(connected, 120, "Ray's replacement replica answering")
        client.manual(max_output_tokens=400)
        client.ask(question(1.0, 5))
        events = [client.recv()]
        while events[-1]["type"] != "response.output_audio.delta":
            events.append(client.recv())
        server.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            while True:
                events.append(client.recv(timeout=60))
        kinds = [e["type"] for e in events]
        assert "error" not in kinds and "response.done" in kinds
        done = next(e for e in events if e["type"] == "response.done")["response"]
        assert done["status"] == "completed" or done["status_details"]["reason"] == "max_output_tokens"
        assert client.ws.close_code == 1001
        assert server.proc.wait(timeout=90) == 0
        left = subprocess.run(["pgrep", "-f", f"serve run {config}"], capture_output=True, text=True).stdout
        assert left == ""  # Ray's `serve run` is gone with it
    finally:
        server.stop()
        print(server.log.read_text()[-3000:], file=sys.stderr)
