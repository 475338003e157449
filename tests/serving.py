"""Test helpers for `covo-edge serve`: a server in a process of its own, a raw WebSocket client, and the
runtime's own replies to hold the server's to."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from covo_edge.runtime import Model
from covo_edge.runtime.synthetic import synthetic_utterance

RATE = 24000


def question(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """A speech-like question as a microphone sends it: int16 at 24 kHz."""
    return (synthetic_utterance(seconds, RATE, seed=seed) * 32767).round().astype(np.int16)


def b64(pcm: np.ndarray) -> str:
    return base64.b64encode(pcm.astype("<i2").tobytes()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`covo-edge serve` on a free loopback port (or, without artifacts, on `port` as its arguments set it, e.g.
    `--cluster CONFIG`); ready once /healthz answers."""

    def __init__(self, art: Path | None, *args: str, log: Path, port: int | None = None):
        self.port = port or free_port()
        self.log = log
        where = [str(art), "--port", str(self.port)] if art is not None else []
        self.proc = subprocess.Popen([sys.executable, "-m", "covo_edge.runtime.cli", "serve", *where, *args],
                                     stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
        deadline = time.monotonic() + 120
        while True:
            try:
                self.health()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime?model=covo"

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return r.read().decode()

    def health(self) -> dict:
        return json.loads(self.get("/healthz"))

    def metric(self, name: str) -> float:
        """One sample of /metrics (`name` with its labels, as written there); 0 when absent."""
        for line in self.get("/metrics").splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Client:
    """A raw WebSocket client: sends events, reads them one at a time (each must be a JSON text frame)."""

    def __init__(self, url: str, **kwargs):
        from websockets.sync.client import connect

        self.ws = connect(url, max_size=None, **kwargs)
        self.created = self.recv()

    def send(self, kind: str, **fields) -> None:
        self.ws.send(json.dumps({"type": kind, **fields}))

    def send_raw(self, text: str) -> None:
        self.ws.send(text)

    def recv(self, timeout: float = 60) -> dict:
        message = self.ws.recv(timeout=timeout)
        assert isinstance(message, str), "the server sent a binary frame"
        event = json.loads(message)
        assert isinstance(event.get("type"), str) and event["event_id"].startswith("event_")
        return event

    def until(self, kind: str, timeout: float = 120) -> list[dict]:
        """Every event up to and including the first of type `kind`."""
        events = []
        while not events or events[-1]["type"] != kind:
            events.append(self.recv(timeout))
        return events

    def manual(self, max_output_tokens: int | None = None, **session) -> None:
        """Manual turns (no server VAD), optionally capped."""
        s = {"type": "realtime", "audio": {"input": {"turn_detection": None}}, **session}
        if max_output_tokens is not None:
            s["max_output_tokens"] = max_output_tokens
        self.send("session.update", session=s)
        assert self.until("session.updated")[-1]["session"]["audio"]["input"]["turn_detection"] is None

    def ask(self, pcm: np.ndarray, **response) -> None:
        """Append, commit, response.create; nothing read."""
        self.send("input_audio_buffer.append", audio=b64(pcm))
        self.send("input_audio_buffer.commit")
        self.send("response.create", **({"response": response} if response else {}))

    def turn(self, pcm: np.ndarray, **response) -> list[dict]:
        """ask(): the events up to response.done."""
        self.ask(pcm, **response)
        return self.until("response.done")

    def close(self) -> None:
        self.ws.close()


def replica_pid(client: Client) -> int:
    """The pid of the server process (Ray Serve replica) that accepted `client`: its `x-covo-replica` header."""
    return int(client.ws.response.headers["x-covo-replica"].rsplit(":", 1)[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """check() until it returns something true (returned), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:g} s")


async def sdk_manual_turns(conn, questions: list[np.ndarray], max_output_tokens: int) -> list[list[dict]]:
    """Through the official SDK's realtime connection: manual turns capped at `max_output_tokens`; each turn's
    events (as dicts) up to response.done. An error event fails the test."""
    await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"],
                                       "audio": {"input": {"turn_detection": None}},
                                       "max_output_tokens": max_output_tokens})
    turns = []
    for q in questions:
        await conn.input_audio_buffer.append(audio=b64(q))
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        events = []
        async for event in conn:
            assert event.type != "error", event
            events.append(event.model_dump())
            if event.type == "response.done":
                break
        turns.append(events)
    return turns


def at_once(talk: Callable[[int], None], n: int, timeout: float = 600) -> None:
    """talk(0) … talk(n-1) on n threads at once; the first exception any of them raised is raised here."""
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            talk(k)
        except BaseException as e:  # noqa: BLE001 (raised below, not lost in the thread)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a client hung"
    if errors:
        raise errors[0]


def spoken(events: list[dict]) -> tuple[str, np.ndarray]:
    """A response's transcript (or text) deltas joined, and its audio deltas as one int16 array."""
    text = "".join(e["delta"] for e in events if e["type"] in ("response.output_audio_transcript.delta",
                                                               "response.output_text.delta"))
    audio = [np.frombuffer(base64.b64decode(e["delta"]), "<i2") for e in events
             if e["type"] == "response.output_audio.delta"]
    return text, np.concatenate(audio) if audio else np.zeros(0, np.int16)


def assert_same_audio(pcm: np.ndarray, reference: np.ndarray | None) -> None:
    """Server PCM16 equals the runtime's float audio to the last bit of 16-bit quantization."""
    reference = np.zeros(0, np.float32) if reference is None else reference
    assert len(pcm) == len(reference)
    assert np.abs(pcm / 32767.0 - np.clip(reference, -1, 1)).max(initial=0) <= 0.51 / 32767


def runtime_replies(model: Model, questions: list[np.ndarray], max_new_tokens: int, truncate: dict | None = None,
                    speak: bool = True):
    """A fresh conversation's replies to `questions` (turn k seeded k, as `serve --seed 0`), streamed like the
    server's; truncate {turn index: audio_ms} after that turn."""
    conversation = model.conversation()
    replies = []
    for k, q in enumerate(questions):
        reply = None
        for chunk in conversation.stream(q, RATE, seed=k, max_new_tokens=max_new_tokens, speak=speak):
            reply = chunk.reply or reply
        replies.append(reply)
        if truncate and k in truncate:
            conversation.truncate(truncate[k])
    return replies
