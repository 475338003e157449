"""`covo-edge serve` on the tiny model over loopback. The official `openai` SDK drives voice turns (manual and
server VAD) whose transcript and audio must equal the runtime's own replies; a raw WebSocket client does
the rest: bad input, limits, cancel, truncate and barge-in (the next turn held to the runtime's), four
sessions at once, a vanishing client, SIGTERM, and a soak for memory."""

import asyncio
import base64
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from conftest import cli, needs
from serving import (
    Client, Server, assert_same_audio, at_once, b64, question, runtime_replies, sdk_manual_turns, spoken,
)

needs("torch", "export")  # the artifacts are exported with torch
needs("uvicorn", "serve")

TOKENS = 200  # a reply long enough for streamed audio before it ends (the tiny model's first audio: token 79)


@pytest.fixture(scope="module")
def server(tiny_art, tmp_path_factory):
    s = Server(tiny_art, "--seed", "0", "--max-sessions", "5", log=tmp_path_factory.mktemp("serve") / "serve.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def model(tiny_art):
    from covo_edge.runtime import Model

    return Model.load(tiny_art, max_batch=4)  # as `serve` loads it: sessions' decode steps batched


def vad_stream(q: np.ndarray, tail_ms: int = 800) -> np.ndarray:
    return np.concatenate([np.zeros(7200, np.int16), q, np.zeros(tail_ms * 24, np.int16)])


def committed(*qs: np.ndarray) -> list[np.ndarray]:
    """What server VAD (default settings) commits of vad_stream(q) for each q sent in turn in one session:
    300 ms of padding before the first speech window through the window that closed the turn."""
    from covo_edge.server.vad import TurnDetector

    stream = np.concatenate([vad_stream(q) for q in qs])
    turns = [e.audio for e in TurnDetector(0.5, 300, 500, 60).push(stream) if e.audio is not None]
    assert len(turns) == len(qs)
    return turns


def test_vad_finds_speech_and_ignores_a_tone_and_noise():
    """Known signal: 1 s silence, 2 s speech-like voice, 1 s silence, 1 s 440 Hz tone, 1 s silence, 1 s white
    noise at -26 dBFS, 1 s silence. One turn: it starts 300 ms (the padding) before the voice, ends at its end."""
    from covo_edge.server.vad import MODEL, TurnDetector
    from covo_edge.runtime.synthetic import synthetic_utterance

    import hashlib
    assert hashlib.sha256(MODEL.read_bytes()).hexdigest().startswith("1a153a22f4509e29")  # Silero v6.2.3
    silence = np.zeros(24000, np.float32)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(24000) / 24000)
    noise = 0.05 * np.random.default_rng(0).standard_normal(24000)
    x = np.concatenate([silence, synthetic_utterance(2.0, 24000), silence, tone, silence, noise, silence])
    x = (x * 32767).round().astype(np.int16)  # PCM16, as the protocol carries it
    d = TurnDetector(0.5, 300, 500, 60)
    events = [e for i in range(0, len(x), 480) for e in d.push(x[i:i + 480])]
    assert [e.kind for e in events] == ["speech_started", "speech_stopped"]
    assert 1000 - 300 - 64 <= events[0].ms <= 1000 - 300 + 32
    assert 2800 <= events[1].ms <= 3100
    assert abs(len(events[1].audio) / 24 - (events[1].ms - events[0].ms + 500)) <= 64


def test_openai_sdk_manual_turns_equal_the_runtime(server, model):
    """Two manual turns through the official SDK: the transcript deltas join to the runtime's reply text, the
    audio deltas to its audio (same seed, same settings)."""
    from openai import AsyncOpenAI

    qs = [question(1.5, 0), question(1.2, 1)]

    async def talk():
        client = AsyncOpenAI(api_key="local", base_url=f"http://127.0.0.1:{server.port}/v1")
        async with client.realtime.connect(model="covo-audio-chat") as conn:
            return await sdk_manual_turns(conn, qs, TOKENS)

    turns = asyncio.run(talk())
    for events, reply in zip(turns, runtime_replies(model, qs, TOKENS), strict=True):
        text, audio = spoken(events)
        assert text == reply.text and len(reply.text) > 0
        assert_same_audio(audio, reply.audio)
        kinds = [e["type"] for e in events if "delta" not in e["type"]]
        assert kinds[kinds.index("response.created"):] == [
            "response.created", "response.output_item.added", "conversation.item.added", "response.content_part.added",
            "response.output_audio.done", "response.output_audio_transcript.done", "response.content_part.done",
            "response.output_item.done", "conversation.item.done", "response.done"]
        done = events[-1]["response"]
        assert done["status"] == "incomplete" and done["status_details"]["reason"] == "max_output_tokens"
        assert done["usage"]["output_tokens"] == TOKENS
        assert done["usage"]["output_token_details"]["audio_tokens"] == len(reply.audio_codes)
        assert done["usage"]["input_token_details"]["audio_tokens"] == reply.audio_slots


def test_openai_sdk_server_vad_turn_equals_the_runtime(server, model):
    """Server VAD (the session default): speech_started, speech_stopped, committed and the response come by
    themselves; the reply is the runtime's reply to the audio the VAD committed."""
    from openai import AsyncOpenAI

    q = question(1.5, 2)
    pcm = vad_stream(q)

    async def talk():
        client = AsyncOpenAI(api_key="local", websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
        events = []
        async with client.realtime.connect(model="covo-audio-chat") as conn:
            await conn.session.update(session={"type": "realtime", "max_output_tokens": 60})
            for i in range(0, len(pcm), 4800):
                await conn.input_audio_buffer.append(audio=b64(pcm[i:i + 4800]))
            async for event in conn:
                events.append(event.model_dump())
                if event.type == "response.done":
                    return events

    events = asyncio.run(talk())
    kinds = [e["type"] for e in events]
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("input_audio_buffer.speech_stopped") \
        < kinds.index("input_audio_buffer.committed") < kinds.index("response.created")
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    assert 0 <= started["audio_start_ms"] <= 300
    text, audio = spoken(events)
    reply = runtime_replies(model, committed(q), 60)[0]
    assert text == reply.text
    assert_same_audio(audio, reply.audio)


def test_text_output_sends_output_text_events(server, model):
    c = Client(server.url)
    c.manual(40)
    events = c.turn(question(1.0, 3), output_modalities=["text"])
    kinds = [e["type"] for e in events]
    assert "response.output_text.delta" in kinds and "response.output_text.done" in kinds
    assert not any(k.startswith("response.output_audio") for k in kinds)
    text, _ = spoken(events)
    assert text == runtime_replies(model, [question(1.0, 3)], 40, speak=False)[0].text
    assert events[-1]["response"]["output"][0]["content"][0] == {"type": "output_text", "text": text}
    c.close()


def test_session_update_deep_merges_and_refuses_what_the_model_cannot_honour(server):
    c = Client(server.url, subprotocols=["realtime"])
    assert c.ws.subprotocol == "realtime"
    s = c.created["session"]
    assert c.created["type"] == "session.created" and s["type"] == "realtime"
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["output"]["voice"] == "prompt" and s["output_modalities"] == ["audio"]
    assert s["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    c.send("session.update", session={"audio": {"input": {"turn_detection": {"threshold": 0.7}},
                                                 "output": {"voice": "long"}}})
    td = c.until("session.updated")[-1]["session"]["audio"]["input"]["turn_detection"]
    assert td["threshold"] == 0.7 and td["silence_duration_ms"] == 500 and td["prefix_padding_ms"] == 300
    refused = {"tools": [{"type": "function", "name": "f"}], "instructions": "be a pirate",
               "audio": {"input": {"format": {"type": "audio/pcmu"}}, "output": {"voice": "alloy"}},
               "max_output_tokens": 99999}
    c.send("session.update", event_id="evt_1", session={**refused, "output_modalities": ["text"]})
    events = c.until("session.updated")
    errors = {e["error"]["param"]: e["error"] for e in events if e["type"] == "error"}
    assert set(errors) == {"session.tools", "session.instructions", "session.audio.input.format",
                           "session.audio.output.voice", "session.max_output_tokens"}
    assert all(e["event_id"] == "evt_1" for e in errors.values())
    assert "alloy" in errors["session.audio.output.voice"]["message"]
    after = events[-1]["session"]
    assert after["output_modalities"] == ["text"] and after["audio"]["output"]["voice"] == "long"
    assert after["max_output_tokens"] == "inf"
    c.close()


def test_bad_input_gets_errors_and_loses_nothing(server, model):
    """Each bad event gets an error naming it (and the client event's id); audio appended before it is kept:
    the turn after them all equals the runtime's."""
    c = Client(server.url)
    c.manual(30)
    q = question(1.0, 4)
    c.send("input_audio_buffer.append", audio=b64(q[:12000]))
    bad = [
        ("not json", "invalid_json"),
        (json.dumps({"type": "no.such.event", "event_id": "e1"}), "invalid_event_type"),
        (json.dumps([1, 2]), "invalid_request_error"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "%%%", "event_id": "e2"}), "invalid_audio"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}), "invalid_audio"),
        (json.dumps({"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0, "audio_end_ms": 5}),
         "item_not_found"),
        (json.dumps({"type": "response.cancel", "event_id": "e3"}), "response_cancel_not_active"),
        (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "hi"}]}}), "unsupported_item"),
        (json.dumps({"type": "response.create", "response": {"tools": [{"type": "function"}]}}), "unsupported_parameter"),
    ]
    for text, code in bad:
        c.send_raw(text)
        e = c.recv()
        assert e["type"] == "error" and e["error"]["code"] == code, (text, e)
        if '"event_id"' in text:
            assert e["error"]["event_id"] == json.loads(text)["event_id"]
    c.send("input_audio_buffer.append", audio=b64(q[12000:]))
    events = c.turn(q[:0])  # an empty append, then commit and respond: the buffer holds all of q
    text, audio = spoken(events)
    reply = runtime_replies(model, [q], 30)[0]
    assert text == reply.text
    assert_same_audio(audio, reply.audio)
    c.close()


def test_commit_rules_silence_and_a_second_response(server):
    c = Client(server.url)
    c.manual(TOKENS)
    c.send("input_audio_buffer.append", audio=b64(question(0.05)))
    c.send("input_audio_buffer.commit", event_id="c1")
    e = c.recv()
    assert e["error"]["code"] == "input_audio_buffer_commit_empty" and e["error"]["event_id"] == "c1"
    c.send("input_audio_buffer.clear")  # a refused commit keeps the buffer: clear it
    assert c.recv()["type"] == "input_audio_buffer.cleared"
    c.send("input_audio_buffer.append", audio=b64(np.zeros(12000, np.int16)))
    c.send("input_audio_buffer.commit")
    e = c.recv()
    assert e["error"]["code"] == "invalid_audio" and "silent" in e["error"]["message"]
    c.send("response.create")
    assert c.recv()["error"]["code"] == "no_user_audio"
    c.ask(question(1.0))
    c.until("response.created")
    c.send("response.create")
    e = c.until("error")[-1]
    assert e["error"]["code"] == "conversation_already_has_active_response"
    c.send("response.cancel")
    done = c.until("response.done")[-1]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "client_cancelled"
    c.close()


def test_cancel_keeps_a_prefix_of_the_reply_and_the_session_goes_on(server, model):
    c = Client(server.url)
    c.manual(TOKENS)
    q = question(1.5, 5)
    c.ask(q)
    events = c.until("response.output_audio_transcript.delta")
    c.send("response.cancel")
    events += c.until("response.done")
    full = runtime_replies(model, [q], TOKENS)[0]
    text, audio = spoken(events)
    done = events[-1]["response"]
    assert done["status"] == "cancelled" and 0 < len(text) < len(full.text) and full.text.startswith(text)
    assert done["output"][0]["status"] == "incomplete"
    assert done["output"][0]["content"][0]["transcript"] == text
    assert done["usage"]["output_tokens"] < TOKENS
    nxt = c.turn(question(1.0, 6))
    assert nxt[-1]["response"]["status"] == "incomplete"  # max_output_tokens: it ran to the cap
    c.close()


def test_truncate_rolls_back_to_what_was_heard(server, model):
    """The client heard 300 ms of the reply: conversation.item.truncated, and the next turn equals the runtime's
    conversation truncated the same way."""
    qs = [question(1.5, 0), question(1.0, 7)]
    c = Client(server.url)
    c.manual(TOKENS)
    first = c.turn(qs[0])
    item = first[-1]["response"]["output"][0]["id"]
    c.send("conversation.item.truncate", item_id=item, content_index=0, audio_end_ms=10 ** 6, event_id="t0")
    e = c.recv()
    assert e["error"]["code"] == "invalid_value" and e["error"]["event_id"] == "t0"
    c.send("conversation.item.truncate", item_id=item, content_index=0, audio_end_ms=300)
    e = c.recv()
    assert e["type"] == "conversation.item.truncated" and e["audio_end_ms"] == 300 and e["item_id"] == item
    text, audio = spoken(c.turn(qs[1]))
    reply = runtime_replies(model, qs, TOKENS, truncate={0: 300})[1]
    assert text == reply.text
    assert_same_audio(audio, reply.audio)
    c.close()


def test_barge_in_cancels_truncates_to_the_audio_sent_and_answers(server, model):
    """Speech during a response (server VAD): the response ends cancelled (turn_detected), the reply is cut
    to the audio the client got, the new question is answered as the runtime answers it after that cut."""
    q1, q2 = question(1.5, 0), question(1.2, 8)
    c = Client(server.url)
    c.send("session.update", session={"max_output_tokens": TOKENS})
    c.until("session.updated")
    pcm = vad_stream(q1)
    c.send("input_audio_buffer.append", audio=b64(pcm))
    first = c.until("response.output_audio.delta")
    c.send("input_audio_buffer.append", audio=b64(vad_stream(q2)[:7200 + 12000]))  # speech starts again
    first += c.until("response.done")
    done = first[-1]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"
    _, heard = spoken(first)
    truncated = c.until("conversation.item.truncated")[-1]
    assert truncated["audio_end_ms"] == 1000 * len(heard) // 24000 > 0
    c.send("input_audio_buffer.append", audio=b64(vad_stream(q2)[7200 + 12000:]))
    second = c.until("response.done")
    assert "input_audio_buffer.speech_stopped" in [e["type"] for e in second]
    text, audio = spoken(second)
    reply = runtime_replies(model, committed(q1, q2), TOKENS, truncate={0: truncated["audio_end_ms"]})[1]
    assert text == reply.text
    assert_same_audio(audio, reply.audio)
    c.close()


def test_four_sessions_at_once_get_their_own_replies(server, model):
    qs = [question(1.0 + 0.2 * k, 10 + k) for k in range(4)]
    results: dict[int, list[dict]] = {}

    def talk(k: int) -> None:
        c = Client(server.url)
        c.manual(48)
        results[k] = c.turn(qs[k])
        c.close()

    at_once(talk, 4)
    for k in range(4):
        text, audio = spoken(results[k])
        reply = runtime_replies(model, [qs[k]], 48)[0]
        assert text == reply.text
        assert_same_audio(audio, reply.audio)


def test_a_vanishing_client_frees_its_session_at_once(server):
    cancelled = server.metric('covo_turns_total{status="cancelled"}')
    before = server.health()["sessions"]
    c = Client(server.url)
    c.manual(TOKENS)
    c.ask(question(1.0))
    c.until("response.output_audio_transcript.delta")
    c.ws.close()
    deadline = time.monotonic() + 5
    while server.health()["sessions"] > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.health()["sessions"] == before
    assert server.metric('covo_turns_total{status="cancelled"}') == cancelled + 1
    assert "covo_first_audio_seconds_count" in server.get("/metrics")


def test_a_full_context_ends_the_response_incomplete_and_says_to_start_over(server):
    """Three 60 s questions overflow the tiny model's 1024-token context on the third."""
    c = Client(server.url)
    c.manual(4)
    long = np.tile(question(1.0, 9), 60)
    for _ in range(2):
        assert c.turn(long)[-1]["response"]["status"] == "incomplete"
    events = c.turn(long)
    done = events[-1]["response"]
    assert done["status"] == "incomplete" and done["status_details"]["reason"] == "context_full"
    e = c.recv()
    assert e["error"]["code"] == "context_full" and "new session" in e["error"]["message"]
    c.close()


def test_limits_key_and_idle_timeout(tiny_art, tmp_path):
    s = Server(tiny_art, "--max-sessions", "1", "--api-key", "sesame", "--max-input-seconds", "1",
               "--idle-timeout", "3", log=tmp_path / "serve.log")
    try:
        from websockets.exceptions import ConnectionClosed

        wrong = Client(s.url, additional_headers={"Authorization": "Bearer nope"})
        assert wrong.created["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed):
            wrong.recv()
        assert wrong.ws.close_code == 1008
        browser = Client(s.url, subprotocols=["realtime", "openai-insecure-api-key.sesame"])
        assert browser.created["type"] == "session.created" and browser.ws.subprotocol == "realtime"
        second = Client(s.url, additional_headers={"Authorization": "Bearer sesame"})
        assert second.created["error"]["code"] == "session_limit_reached"
        with pytest.raises(ConnectionClosed):
            second.recv()
        assert second.ws.close_code == 1008
        metrics = s.get("/metrics")
        assert 'covo_refused_total{code="invalid_api_key"} 1' in metrics
        assert 'covo_refused_total{code="session_limit_reached"} 1' in metrics
        browser.manual()
        browser.send("input_audio_buffer.append", audio=b64(question(1.5)))
        assert browser.recv()["error"]["code"] == "input_audio_buffer_full"
        browser.send("input_audio_buffer.append", audio=b64(question(0.8)))
        browser.send("input_audio_buffer.commit")
        assert browser.until("conversation.item.done")[0]["type"] == "input_audio_buffer.committed"
        browser.send("input_audio_buffer.append", audio=b64(question(0.8, 1)))
        browser.send("input_audio_buffer.commit")  # 1.6 s would wait for one answer: refused, the buffer kept
        assert browser.recv()["error"]["code"] == "input_audio_buffer_full"
        browser.send("input_audio_buffer.clear")
        assert browser.recv()["type"] == "input_audio_buffer.cleared"
        e = browser.recv(timeout=10)
        assert e["error"]["code"] == "session_idle_timeout"
        with pytest.raises(ConnectionClosed):
            browser.recv()
        assert s.health()["sessions"] == 0
    finally:
        s.stop()


def test_a_non_loopback_bind_without_a_key_is_refused(capsys, tiny_art):
    code, out, err = cli(capsys, "serve", str(tiny_art), "--host", "0.0.0.0")
    assert code == 2 and "--api-key" in err and len(err.strip().splitlines()) == 1


def test_sigterm_cancels_responses_closes_with_1001_and_exits_0(tiny_art, tmp_path):
    s = Server(tiny_art, log=tmp_path / "serve.log")
    from websockets.exceptions import ConnectionClosed

    c = Client(s.url)
    c.manual(TOKENS)
    c.ask(question(1.0))
    c.until("response.created")
    os.kill(s.proc.pid, signal.SIGTERM)
    done = c.until("response.done")[-1]["response"]
    assert done["status"] == "cancelled"
    with pytest.raises(ConnectionClosed):
        c.recv()
    assert c.ws.close_code == 1001
    assert s.proc.wait(30) == 0


def test_a_failing_turn_fails_its_response_and_the_others_go_on(tiny_art):
    """A backend error in one session's turn: that response ends `failed` with the reason; the session, and
    another session, go on."""
    from covo_edge.runtime import Model
    from covo_edge.server.bench import start_server

    m = Model.load(tiny_art)
    server, thread, port = start_server(m, 2)
    try:
        url = f"ws://127.0.0.1:{port}/v1/realtime"
        a, b = Client(url), Client(url)
        a.manual(8)
        b.manual(8)
        run = m.backend.inner.run
        m.backend.inner.run = lambda graph, *args, **kw: (_ for _ in ()).throw(RuntimeError("device lost"))
        failed = a.turn(question(1.0))[-1]["response"]
        m.backend.inner.run = run
        assert failed["status"] == "failed" and "device lost" in failed["status_details"]["error"]["message"]
        assert b.turn(question(1.0))[-1]["response"]["status"] == "incomplete"
        assert a.turn(question(1.0))[-1]["response"]["status"] == "incomplete"
    finally:
        server.should_exit = True
        thread.join(30)


def test_soak_memory_is_flat(server):
    """4 sessions x 25 turns: resident memory after the first 5 turns stays within 5 %."""
    from covo_edge.server.metrics import rss

    rss_at: dict[int, list[int]] = {5: [], 25: []}
    barrier = threading.Barrier(4)

    def talk(k: int) -> None:
        try:
            c = Client(server.url)
            c.manual(4)
            for turn in range(1, 26):
                assert c.turn(question(0.3, k))[-1]["response"]["status"] == "incomplete"  # 4 tokens, the cap
                if turn in rss_at:
                    barrier.wait(60)
                    rss_at[turn].append(rss(server.proc.pid))
            c.close()
        except BaseException:
            barrier.abort()  # the others stop waiting
            raise

    at_once(talk, 4)
    early, late = max(rss_at[5]), max(rss_at[25])
    assert abs(late - early) <= 0.05 * early, (early, late)
