"""`covo-edge bench-serve`: the server's first-audio latency and throughput with N concurrent clients on
loopback, beside the runtime's own first-audio time for the very same turns, in one process (JSON).

Each client streams its question at real-time pace with server VAD on: 300 ms of silence, the question,
then silence_ms + 200 ms of silence (enough for the VAD to close the turn), then waits for the reply.
Times per turn: from the last speech sample sent (`speech_end`) and from `speech_stopped` arriving
(`stopped`, the server's end-of-turn decision) to the first `response.output_audio.delta`. The runtime
side runs the turns the server committed (found by the same VAD over the same stream) on a conversation
of its own, alone, with the same seeds, so both sides compute the same replies.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import uvicorn

from covo_edge.runtime import Model
from covo_edge.runtime.frontend import load_audio, resample
from covo_edge.runtime.synthetic import synthetic_utterance

from .app import ServeOptions, create_app
from .metrics import rss
from .protocol import RATE
from .session import Limits
from .vad import TurnDetector

CHUNK = RATE // 50  # 20 ms per append, as a microphone sends
LEAD_MS = 300


@dataclass
class Turn:
    speech_end_to_first_audio: float | None = None
    stopped_to_first_audio: float | None = None
    runtime_first_audio: float | None = None  # the runtime's own time of this turn (response.done's covo_timings)
    output_tokens: int = 0
    stopped: float = 0.0  # when speech_stopped came, and response.done (perf_counter)
    done: float = 0.0


@dataclass
class Phase:
    sessions: int
    turns: list[Turn] = field(default_factory=list)
    wall: float = 0.0
    rss_bytes: int = 0
    queued: float = 0.0  # seconds graph calls waited for another session's (the model runs one at a time)


def question(path: str | None) -> np.ndarray:
    if path is None:
        return synthetic_utterance(2.0, RATE)
    wav, rate = load_audio(path)
    wav = wav.mean(axis=0) if wav.ndim == 2 else wav
    return resample(wav, rate, RATE).astype(np.float32)


def stream_of(q: np.ndarray, silence_ms: int) -> np.ndarray:
    """One turn's input as the client sends it."""
    return np.concatenate([np.zeros(LEAD_MS * RATE // 1000, np.float32), q,
                           np.zeros((silence_ms + 200) * RATE // 1000, np.float32)])


def committed_turns(q: np.ndarray, turns: int, silence_ms: int) -> list[np.ndarray]:
    """The audio the server commits for each turn: the same VAD over the same samples."""
    detector, out = TurnDetector(0.5, LEAD_MS, silence_ms, 60.0), []
    pcm = (np.clip(stream_of(q, silence_ms), -1, 1) * 32767).round().astype(np.int16)
    for _ in range(turns):
        out += [e.audio for e in detector.push(pcm) if e.audio is not None]
    if len(out) != turns:
        raise SystemExit(f"covo-edge bench-serve: the VAD found {len(out)} turns in {turns} repetitions of the "
                         "question: use a question with speech in it (--input)")
    return out


def runtime_first_audio(model: Model, audio: list[np.ndarray], max_tokens: int) -> list[float | None]:
    conversation = model.conversation()
    times = []
    for k, a in enumerate(audio):
        reply = None
        for chunk in conversation.stream(a, RATE, seed=k, max_new_tokens=max_tokens):
            reply = chunk.reply or reply
        times.append(reply.timings.get("first_audio"))
    return times


async def client(url: str, q: np.ndarray, turns: int, max_tokens: int, silence_ms: int) -> list[Turn]:
    """One client's turns. A reader task stamps each event as it arrives, while the sender is still pacing."""
    from websockets.asyncio.client import connect

    pcm = (np.clip(stream_of(q, silence_ms), -1, 1) * 32767).round().astype("<i2").tobytes()
    speech_end = (LEAD_MS * RATE // 1000 + len(q)) * 2  # byte offset of the last speech sample
    out = []
    async with connect(url, max_size=None) as ws:
        await ws.recv()
        vad = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": LEAD_MS, "silence_duration_ms": silence_ms}
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "max_output_tokens": max_tokens, "audio": {"input": {"turn_detection": vad}}}}))
        inbox: asyncio.Queue[tuple[float, dict]] = asyncio.Queue()

        async def read() -> None:
            async for message in ws:
                inbox.put_nowait((time.perf_counter(), json.loads(message)))

        reader = asyncio.create_task(read())
        for _ in range(turns):
            turn, t_end, t_stopped = Turn(), 0.0, 0.0
            t0 = time.perf_counter()
            for i in range(0, len(pcm), 2 * CHUNK):
                await asyncio.sleep(max(0.0, t0 + i / 2 / RATE - time.perf_counter()))  # real-time pace
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(pcm[i : i + 2 * CHUNK]).decode()}))
                if i < speech_end <= i + 2 * CHUNK:
                    t_end = time.perf_counter()
            while True:
                now, e = await inbox.get()
                if e["type"] == "input_audio_buffer.speech_stopped":
                    t_stopped = turn.stopped = now
                elif e["type"] == "response.output_audio.delta" and turn.stopped_to_first_audio is None:
                    turn.speech_end_to_first_audio, turn.stopped_to_first_audio = now - t_end, now - t_stopped
                elif e["type"] == "response.done":
                    turn.output_tokens = (e["response"].get("usage") or {}).get("output_tokens", 0)
                    turn.done = now
                    first = e.get("covo_timings", {}).get("runtime_ms", {}).get("first_audio")
                    turn.runtime_first_audio = None if first is None else first / 1000
                    break
                elif e["type"] == "error":
                    raise SystemExit(f"covo-edge bench-serve: the server answered an error: {e['error']['message']}")
            out.append(turn)
        reader.cancel()
    return out


async def held_sessions(url: str, counts: list[int], q: np.ndarray, max_tokens: int) -> dict[int, int]:
    """Resident memory with n sessions open, for each n in counts: sessions open one after another, each
    answers one manual turn (its KV cache filled) and stays open; measured after the n-th turn."""
    from websockets.asyncio.client import connect

    pcm = base64.b64encode((np.clip(q, -1, 1) * 32767).round().astype("<i2").tobytes()).decode()
    setup = {"type": "session.update", "session": {"type": "realtime", "max_output_tokens": max_tokens,
                                                   "audio": {"input": {"turn_detection": None}}}}
    memory, sockets = {}, []
    try:
        for n in range(1, max(counts) + 1):
            ws = await connect(url, max_size=None)
            sockets.append(ws)
            await ws.recv()
            for e in (setup, {"type": "input_audio_buffer.append", "audio": pcm}, {"type": "input_audio_buffer.commit"},
                      {"type": "response.create"}):
                await ws.send(json.dumps(e))
            while json.loads(await ws.recv())["type"] != "response.done":
                pass
            if n in counts:
                memory[n] = rss()
    finally:
        for ws in sockets:
            await ws.close()
    return memory


async def phase(model: Model, url: str, n: int, q: np.ndarray, args: argparse.Namespace) -> Phase:
    t0, waited = time.perf_counter(), model.backend.waited
    results = await asyncio.gather(*(client(url, q, args.turns, args.max_output_tokens, args.silence_ms)
                                     for _ in range(n)))
    turns = [t for r in results for t in r]  # in turn order per client: turn k at index k % args.turns
    return Phase(n, turns, time.perf_counter() - t0, rss(), model.backend.waited - waited)


def percentiles(values: list[float | None]) -> dict[str, float | None]:
    v = [x for x in values if x is not None]
    if not v:
        return {"p50_ms": None, "p95_ms": None, "n": 0}
    return {"p50_ms": round(1000 * float(np.percentile(v, 50)), 1), "p95_ms": round(1000 * float(np.percentile(v, 95)), 1),
            "n": len(v)}


def start_server(model: Model, n: int) -> tuple[uvicorn.Server, threading.Thread, int]:
    """The realtime app on a free loopback port, on a thread of this process."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(model, ServeOptions(max_sessions=n, limits=Limits(seed=0)))
    server = uvicorn.Server(uvicorn.Config(app, ws="websockets-sansio", log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("covo-edge bench-serve: the server did not start")
        time.sleep(0.05)
    return server, thread, port


def busy(turns: list[Turn], per_client: int) -> float:
    """Seconds the server was answering: per turn k, from the first client's speech_stopped to the last
    client's response.done (the clients speak at once), summed over k."""
    waves = [turns[k::per_client] for k in range(per_client)]
    return sum(max(t.done for t in w) - min(t.stopped for t in w) for w in waves)


def row(p: Phase, per_client: int) -> dict:
    """One phase's measurements. What the server adds is per turn: the client's time from speech_stopped to the
    first audio delta minus the runtime's own first-audio time of that very turn (reported in response.done)."""
    stopped = percentiles([t.stopped_to_first_audio for t in p.turns])
    added = percentiles([t.stopped_to_first_audio - t.runtime_first_audio for t in p.turns
                         if None not in (t.stopped_to_first_audio, t.runtime_first_audio)])
    return {"sessions": p.sessions, "stopped_to_first_audio": stopped,
            "speech_end_to_first_audio": percentiles([t.speech_end_to_first_audio for t in p.turns]),
            "runtime_first_audio_in_server": percentiles([t.runtime_first_audio for t in p.turns]),
            "server_added": added,
            "decode_tokens_per_second": round(sum(t.output_tokens for t in p.turns) / busy(p.turns, per_client), 1),
            "queued_per_turn_ms": round(1000 * p.queued / max(len(p.turns), 1), 1),
            "wall_seconds": round(p.wall, 1), "rss_mb": round(p.rss_bytes / 2**20, 1)}


def bench_serve(model: Model, args: argparse.Namespace) -> int:
    q = question(args.input)
    audio = committed_turns(q, args.turns, args.silence_ms)
    print(f"runtime alone: {args.turns} turns (after one to warm up)", file=sys.stderr)
    runtime_first_audio(model, audio[:1], args.max_output_tokens)
    runtime = runtime_first_audio(model, audio, args.max_output_tokens)
    server, thread, port = start_server(model, max(args.sessions + args.memory))
    url = f"ws://127.0.0.1:{port}/v1/realtime?model=bench"
    phases, memory = [], {}
    try:
        for n in args.sessions:
            print(f"{n} concurrent session(s), {args.turns} turns each", file=sys.stderr)
            phases.append(asyncio.run(phase(model, url, n, q, args)))
        memory["none"] = rss()
        if args.memory:
            print(f"memory with {', '.join(map(str, args.memory))} open session(s)", file=sys.stderr)
            memory.update(asyncio.run(held_sessions(url, sorted(args.memory), q, args.max_output_tokens)))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    report = {
        "artifacts": str(model.artifacts), "backend": args.backend, "device": args.device,
        "question_seconds": round(len(q) / RATE, 3), "turns": args.turns, "max_output_tokens": args.max_output_tokens,
        "silence_duration_ms": args.silence_ms,
        "runtime_alone_first_audio": {**percentiles(runtime), "per_turn_ms": [None if t is None else round(1000 * t, 1)
                                                                        for t in runtime]},
        "sessions": [row(p, args.turns) for p in phases],
        "memory": {"rss_mb_between_phases": round(memory["none"] / 2**20, 1),
                   "open_sessions": [{"sessions": n, "rss_mb": round(memory[n] / 2**20, 1)} for n in args.memory]},
    }
    if len(args.memory) > 1:
        (a, b) = args.memory[0], args.memory[-1]
        report["memory"]["mb_per_extra_session"] = round((memory[b] - memory[a]) / (b - a) / 2**20, 2)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    if args.chart:
        chart(report, args.chart)
    return 0


def chart(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["sessions"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (key, label) in enumerate([("stopped_to_first_audio", "speech_stopped → first audio"),
                                      ("speech_end_to_first_audio", "end of speech → first audio")]):
        p50 = [r[key]["p50_ms"] or 0 for r in rows]
        p95 = [r[key]["p95_ms"] or 0 for r in rows]
        ax.bar(x + 0.35 * k, p50, 0.35, label=f"{label} (p50; whisker p95)",
               yerr=[np.zeros(len(rows)), np.subtract(p95, p50)])
    if report["runtime_alone_first_audio"]["p50_ms"] is not None:
        ax.axhline(report["runtime_alone_first_audio"]["p50_ms"], color="k", ls="--", label="runtime alone (p50)")
    ax.set_xticks(x + 0.175, [f"{r['sessions']} session(s)" for r in rows])
    ax.set_ylabel("ms")
    ax.set_title("covo-edge serve: first audio")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
