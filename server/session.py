"""One realtime session: a client's events in, the protocol's events out, one `Conversation` on the shared
`Model` underneath. It calls the runtime's public API only (conversation.stream, truncate, Cancel).

A response runs `Conversation.stream` on a worker thread (the runtime is synchronous; the model runs one
graph call at a time for all sessions) and hands its chunks to the event loop, which sends them; a cancel
(response.cancel, barge-in, a vanished client, shutdown) stops it within one decode step.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covo_edge.runtime import Cancel, ContextFullError, CovoEdgeError, Model, Reply, check_audio

from .metrics import Metrics
from .protocol import RATE, ProtocolError, SessionConfig, TurnDetection, event, max_output_tokens, new_id, usage
from .vad import TurnDetector

log = logging.getLogger("covo_edge.server")
MIN_COMMIT_MS = 100


@dataclass
class Limits:
    """Per-session bounds: input audio held (seconds), idle time without a client event (seconds)."""

    max_input_seconds: float = 60.0
    idle_timeout: float = 600.0
    seed: int | None = None  # turn n of a session samples with seed + n (reproducible replies)


@dataclass
class _Response:
    id: str
    item_id: str
    modalities: tuple[str, ...]
    cancel: Cancel = field(default_factory=Cancel)
    reason: str = "client_cancelled"  # why it was cancelled, when it is
    samples_sent: int = 0
    task: asyncio.Task | None = None


def pcm16(audio: np.ndarray) -> str:
    """24 kHz float samples as base64 PCM16 little-endian."""
    return base64.b64encode((np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()).decode("ascii")


def decode_pcm16(data: Any) -> np.ndarray:
    """A base64 PCM16 LE string -> int16 samples, or ProtocolError naming what is wrong."""
    if not isinstance(data, str):
        raise ProtocolError("audio must be a base64 string of 16-bit PCM at 24 kHz", param="audio")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("audio is not valid base64", code="invalid_audio", param="audio") from None
    if len(raw) % 2:
        raise ProtocolError(f"audio has an odd number of bytes ({len(raw)}): 16-bit PCM takes 2 bytes a sample",
                            code="invalid_audio", param="audio")
    return np.frombuffer(raw, "<i2")


class Session:
    """The protocol state of one connection. `handle` takes each client message; `close` frees it."""

    def __init__(self, model: Model, send: Callable[[dict[str, Any]], Awaitable[None]], limits: Limits,
                 metrics: Metrics, voice: str | None, model_name: str):
        self.model = model
        self._send = send
        self.limits = limits
        self.metrics = metrics
        speech = model.mode == "speech"
        voices = tuple(model.manifest.voices) if speech else ()
        self.config = SessionConfig(
            id=new_id("sess"), model=model_name, instructions=model.manifest.prompt.system,
            voice=(voice or voices[0]) if speech else None, voices=voices,
            output_modalities=("audio",) if speech else ("text",),
        )
        self.conversation = model.conversation(self.config.voice)
        self.items: list[dict[str, Any]] = []  # the conversation's items, in order
        self.pending: list[np.ndarray] = []  # committed user audio not yet answered
        self.buffer: list[np.ndarray] = []  # input_audio_buffer (manual turns)
        self.buffered = 0
        self.detector = self._detector()
        self.speech_item: str | None = None  # the user item the VAD is filling
        self.response: _Response | None = None
        self.respond_after = False  # a VAD turn ended while a response ran: answer it next
        self.voice_locked = False
        self.sent_lock = asyncio.Lock()
        self.closed = False

    # -- plumbing ----------------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        async with self.sent_lock:
            await self._send(message)
        if message["type"] == "error":
            self.metrics.errors[message["error"]["code"]] += 1

    async def start(self) -> None:
        await self.send(event("session.created", session=self.config.to_json()))

    async def handle(self, text: str) -> None:
        """One client message. Whatever is wrong with it is answered with an `error`; nothing is lost."""
        client_id = None
        try:
            try:
                message = json.loads(text)
            except (json.JSONDecodeError, TypeError) as e:
                raise ProtocolError(f"the message is not valid JSON ({e})", code="invalid_json") from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise ProtocolError("a client event must be a JSON object with a string `type`", param="type")
            client_id = message.get("event_id") if isinstance(message.get("event_id"), str) else None
            handler = self._handlers.get(message["type"])
            if handler is None:
                raise ProtocolError(f"unknown or unsupported event type {message['type']!r}",
                                    code="invalid_event_type", param="type")
            await handler(self, message)
        except ProtocolError as e:
            await self.send(e.event(client_id))

    async def close(self, reason: str = "client_gone") -> None:
        """End the session: a running response is cancelled (its worker stops within one decode step)
        and the conversation, with its KV cache, is dropped."""
        r = self.response
        self.closed = reason == "client_gone"  # else the response's last events still go out
        if r is not None and r.task is not None:
            r.reason = reason
            r.cancel.set()
            await asyncio.gather(r.task, return_exceptions=True)
        self.closed = True
        self.conversation = None  # type: ignore[assignment]

    # -- session ---------------------------------------------------------------------------------------

    async def _session_update(self, m: dict[str, Any]) -> None:
        old = self.config
        self.config, problems = old.updated(m.get("session"), self.voice_locked)
        if self.config.voice != old.voice:
            self.conversation.voice = self.model.voice(self.config.voice)
        if self.config.turn_detection != old.turn_detection:
            self.detector = self._detector()
            self.speech_item = None
        for p in problems:
            await self.send(p.event(m.get("event_id")))
        await self.send(event("session.updated", session=self.config.to_json()))

    def _detector(self) -> TurnDetector | None:
        td: TurnDetection | None = self.config.turn_detection
        if td is None:
            return None
        return TurnDetector(td.threshold, td.prefix_padding_ms, td.silence_duration_ms, self.limits.max_input_seconds)

    # -- input audio -----------------------------------------------------------------------------------

    async def _append(self, m: dict[str, Any]) -> None:
        samples = decode_pcm16(m.get("audio"))
        if self.detector is None:
            if self.buffered + len(samples) > self.limits.max_input_seconds * RATE:
                raise ProtocolError(f"the input audio buffer is full ({self.limits.max_input_seconds:g} s): commit "
                                    "or clear it before appending more", code="input_audio_buffer_full")
            self.buffer.append(samples)
            self.buffered += len(samples)
            return
        for e in self.detector.push(samples):
            if e.kind == "speech_started":
                self.speech_item = new_id("item")
                await self._barge_in()
                await self.send(event("input_audio_buffer.speech_started", audio_start_ms=e.ms,
                                      item_id=self.speech_item))
            else:
                item_id, self.speech_item = self.speech_item or new_id("item"), None
                await self.send(event("input_audio_buffer.speech_stopped", audio_end_ms=e.ms, item_id=item_id))
                if len(e.audio) >= MIN_COMMIT_MS * RATE // 1000 and await self._commit_audio(e.audio, item_id, m.get("event_id")) and self.config.turn_detection.create_response:
                    if self.response is None:
                        await self._start_response({}, time.perf_counter())
                    else:
                        self.respond_after = True

    async def _barge_in(self) -> None:
        """Speech while a response runs: cancel it (interrupt_response); it is then truncated to the audio
        already sent, unless the client truncates it itself."""
        r = self.response
        if r is not None and self.config.turn_detection.interrupt_response:
            r.reason = "turn_detected"
            r.cancel.set()

    async def _commit(self, m: dict[str, Any]) -> None:
        if self.detector is not None:  # server VAD: commit the speech heard so far
            self.buffer = [self.detector.take()]
            self.speech_item = None
        audio = np.concatenate(self.buffer) if self.buffer else np.zeros(0, np.int16)
        if len(audio) < MIN_COMMIT_MS * RATE // 1000:
            raise ProtocolError(f"the input audio buffer holds {1000 * len(audio) / RATE:.0f} ms: commit at least "
                                f"{MIN_COMMIT_MS} ms", code="input_audio_buffer_commit_empty")
        if await self._commit_audio(audio, new_id("item"), m.get("event_id")):
            self.buffer, self.buffered = [], 0  # a refused commit keeps the buffer

    async def _commit_audio(self, audio: np.ndarray, item_id: str, client_id: str | None) -> bool:
        """A user audio item: checked (silent audio cannot be answered), committed, added to the conversation."""
        try:
            check_audio(audio, RATE)
            self._check_pending(len(audio))
        except CovoEdgeError as e:
            await self.send(ProtocolError(f"the committed audio cannot be used: {e}", code="invalid_audio").event(client_id))
            return False
        except ProtocolError as e:
            await self.send(e.event(client_id))
            return False
        previous = self.items[-1]["id"] if self.items else None
        await self.send(event("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous))
        await self._add_user_item(item_id, audio, previous)
        return True

    def _check_pending(self, samples: int) -> None:
        """User audio waiting for an answer is bounded like the input buffer (one turn's worth)."""
        waiting = sum(len(a) for a in self.pending)
        if waiting + samples > self.limits.max_input_seconds * RATE:
            raise ProtocolError(f"{waiting / RATE:.1f} s of committed audio already wait for an answer and this "
                                f"server takes {self.limits.max_input_seconds:g} s a turn: send response.create "
                                "before committing more", code="input_audio_buffer_full")

    async def _add_user_item(self, item_id: str, audio: np.ndarray, previous: str | None) -> None:
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}]}
        self.items.append(item)
        self.pending.append(audio)
        await self.send(event("conversation.item.added", previous_item_id=previous, item=item))
        await self.send(event("conversation.item.done", previous_item_id=previous, item=item))

    async def _clear(self, m: dict[str, Any]) -> None:
        self.buffer, self.buffered = [], 0
        if self.detector is not None:
            self.detector.clear()
            self.speech_item = None
        await self.send(event("input_audio_buffer.cleared"))

    # -- items -----------------------------------------------------------------------------------------

    async def _item_create(self, m: dict[str, Any]) -> None:
        item = m.get("item")
        if not isinstance(item, dict):
            raise ProtocolError("conversation.item.create needs an item object", param="item")
        content = item.get("content") if isinstance(item.get("content"), list) else []
        kinds = [c.get("type") for c in content if isinstance(c, dict)]
        if item.get("type", "message") != "message" or item.get("role") != "user" or not kinds or set(kinds) != {"input_audio"}:
            raise ProtocolError("only user messages of input_audio content can be added: Covo-Audio-Chat answers "
                                "speech (text-only messages, system messages and function calls are not supported)",
                                code="unsupported_item", param="item")
        audio = np.concatenate([decode_pcm16(c.get("audio")) for c in content])
        if len(audio) > self.limits.max_input_seconds * RATE:
            raise ProtocolError(f"the item holds {len(audio) / RATE:.1f} s of audio, more than this server's "
                                f"{self.limits.max_input_seconds:g} s a turn", code="input_audio_buffer_full",
                                param="item")
        try:
            check_audio(audio, RATE)
        except CovoEdgeError as e:
            raise ProtocolError(f"the item's audio cannot be used: {e}", code="invalid_audio", param="item") from None
        self._check_pending(len(audio))
        previous = self.items[-1]["id"] if self.items else None
        await self._add_user_item(item.get("id") or new_id("item"), audio, previous)

    async def _truncate(self, m: dict[str, Any]) -> None:
        item_id, index, end_ms = m.get("item_id"), m.get("content_index", 0), m.get("audio_end_ms")
        item = next((i for i in self.items if i["id"] == item_id), None)
        if item is None:
            raise ProtocolError(f"unknown item_id {item_id!r}", code="item_not_found", param="item_id")
        if item["role"] != "assistant" or item is not self._last_assistant():
            raise ProtocolError("only the last assistant message can be truncated", code="invalid_value", param="item_id")
        if index != 0:
            raise ProtocolError(f"content_index must be 0, got {index!r}", code="invalid_value", param="content_index")
        if self.response is not None and self.response.item_id == item_id:
            raise ProtocolError("the item's response is still running: cancel it first", code="invalid_value",
                                param="item_id")
        if isinstance(end_ms, bool) or not isinstance(end_ms, int) or not 0 <= end_ms <= item["_audio_ms"]:
            raise ProtocolError(f"audio_end_ms must be an integer from 0 to the item's {item['_audio_ms']} ms of "
                                f"audio, got {end_ms!r}", code="invalid_value", param="audio_end_ms")
        await self._apply_truncate(item, end_ms)

    async def _apply_truncate(self, item: dict[str, Any], end_ms: int) -> None:
        try:
            transcript = await asyncio.to_thread(self.conversation.truncate, end_ms)
        except CovoEdgeError as e:
            raise ProtocolError(f"cannot truncate: {e}", code="invalid_value", param="audio_end_ms") from None
        item["content"][0]["transcript"] = transcript
        item["_audio_ms"] = end_ms
        await self.send(event("conversation.item.truncated", item_id=item["id"], content_index=0, audio_end_ms=end_ms))

    def _last_assistant(self) -> dict[str, Any] | None:
        return next((i for i in reversed(self.items) if i["role"] == "assistant"), None)

    async def _refuse(self, m: dict[str, Any]) -> None:
        raise ProtocolError(f"{m['type']} is not supported by this server", code="unsupported_event", param="type")

    # -- responses -------------------------------------------------------------------------------------

    async def _response_create(self, m: dict[str, Any]) -> None:
        if self.response is not None:
            raise ProtocolError("a response is already in progress: wait for response.done or cancel it",
                                code="conversation_already_has_active_response")
        options = m.get("response") or {}
        if not isinstance(options, dict):
            raise ProtocolError("response must be an object", param="response")
        await self._start_response(options, time.perf_counter())

    async def _start_response(self, options: dict[str, Any], t0: float) -> None:
        modalities, limit = self.config.output_modalities, self.config.max_output_tokens
        for key, value in options.items():
            if key == "output_modalities":
                if value not in (["audio"], ["text"]) or value == ["audio"] and self.config.voice is None:
                    raise ProtocolError(f'output_modalities must be ["audio"] or ["text"] (["audio"] needs a server '
                                        f'started in speech mode), got {value!r}', param="response.output_modalities")
                modalities = tuple(value)
            elif key == "max_output_tokens":
                try:
                    limit = max_output_tokens(value)
                except ProtocolError as e:
                    raise ProtocolError(e.message, e.code, "response.max_output_tokens") from None
            elif key == "metadata" or (key, value) in (("instructions", self.config.instructions), ("conversation", "auto")):
                continue
            else:
                raise ProtocolError(f"response.{key} is not supported by this server", code="unsupported_parameter",
                                    param=f"response.{key}")
        if not self.pending:
            raise ProtocolError("there is no user audio to answer: commit input audio (or add an input_audio item) "
                                "first", code="no_user_audio")
        audio = np.concatenate(self.pending)
        self.pending = []
        r = _Response(new_id("resp"), new_id("item"), modalities)
        self.response = r
        r.task = asyncio.create_task(self._respond(r, audio, limit, t0))

    async def _cancel(self, m: dict[str, Any]) -> None:
        r = self.response
        wanted = m.get("response_id")
        if r is None or (wanted is not None and wanted != r.id):
            raise ProtocolError("there is no active response to cancel", code="response_cancel_not_active")
        r.reason = "client_cancelled"
        r.cancel.set()

    async def _respond(self, r: _Response, audio: np.ndarray, limit: int | None, t0: float) -> None:
        """One response, from response.created to response.done, whatever ends it."""
        speak = r.modalities == ("audio",)
        previous = self.items[-1]["id"] if self.items else None
        item = {"id": r.item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": "in_progress", "content": [], "_audio_ms": 0}
        self.items.append(item)
        where = {"response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0}
        await self.send(event("response.created", response=self._response_json(r, "in_progress", None, [], None)))
        await self.send(event("response.output_item.added", response_id=r.id, output_index=0, item=_public(item)))
        await self.send(event("conversation.item.added", previous_item_id=previous, item=_public(item)))
        await self.send(event("response.content_part.added", **where,
                              part={"type": "audio", "transcript": ""} if speak else {"type": "text", "text": ""}))
        text, reply, error, timing = "", None, None, {"first_text": None, "first_audio": None, "start": t0}
        try:
            async for chunk in self._chunks(r, audio, limit, speak, timing):
                if chunk.text:
                    text += chunk.text
                    timing["first_text"] = timing["first_text"] or time.perf_counter() - t0
                    kind = "response.output_audio_transcript.delta" if speak else "response.output_text.delta"
                    await self.send(event(kind, **where, delta=chunk.text))
                if chunk.audio is not None and chunk.audio.size and not r.cancel.is_set():
                    timing["first_audio"] = timing["first_audio"] or time.perf_counter() - t0
                    self.voice_locked = True
                    r.samples_sent += len(chunk.audio)
                    await self.send(event("response.output_audio.delta", **where, delta=pcm16(chunk.audio)))
                reply = chunk.reply or reply
        except ContextFullError as e:
            error = ProtocolError(f"{e}", code="context_full")
        except CovoEdgeError as e:
            error = ProtocolError(f"the turn failed: {e}", code="invalid_audio")
        except Exception as e:  # a backend failure ends this response, not the session nor the server
            log.exception("session %s: response %s failed", self.config.id, r.id)
            error = ProtocolError(f"the model failed on this turn: {type(e).__name__}: {e}", code="server_error",
                                  type="server_error")
        await self._finish(r, item, where, text, reply, error, speak, len(audio), timing)

    async def _chunks(self, r: _Response, audio: np.ndarray, limit: int | None, speak: bool, timing: dict[str, Any]):
        """Conversation.stream on a worker thread, its chunks handed to this loop as they come; when the turn
        began on the thread goes into timing["started"]."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        conversation = self.conversation
        seed = None if self.limits.seed is None else self.limits.seed + conversation.turns

        def work() -> None:
            timing["started"] = time.perf_counter() - timing["start"]
            try:
                for chunk in conversation.stream(audio, RATE, max_new_tokens=limit, seed=seed, speak=speak,
                                                 cancel=r.cancel):
                    loop.call_soon_threadsafe(queue.put_nowait, ("chunk", chunk))
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except BaseException as e:  # handed to the loop, raised there
                loop.call_soon_threadsafe(queue.put_nowait, ("error", e))

        threading.Thread(target=work, name=f"turn-{r.id}", daemon=True).start()
        while True:
            kind, value = await queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    async def _finish(self, r: _Response, item: dict[str, Any], where: dict[str, Any], text: str, reply: Reply | None,
                      error: ProtocolError | None, speak: bool, input_samples: int, timing: dict[str, Any]) -> None:
        reason = reply.finish_reason if reply is not None else None
        if error is not None:
            status, details = ("incomplete", {"type": "incomplete", "reason": "context_full"}) \
                if error.code == "context_full" else ("failed", {"type": "failed", "error": {
                    "type": error.type, "code": error.code, "message": error.message}})
        elif reason == "cancelled":
            status, details = "cancelled", {"type": "cancelled", "reason": r.reason}
        elif reason in ("length", "context_full"):
            status = "incomplete"
            details = {"type": "incomplete", "reason": "max_output_tokens" if reason == "length" else "context_full"}
        else:
            status, details = "completed", None
        audio_ms = 1000 * r.samples_sent // RATE
        truncated = False
        if reason == "cancelled" and r.reason == "turn_detected" and reply is not None and reply.audio is not None \
                and not self.closed:
            text = await asyncio.to_thread(self.conversation.truncate, audio_ms)  # what was sent is all they heard
            truncated = True
        item["_audio_ms"] = audio_ms
        item["status"] = "completed" if status == "completed" else "incomplete"
        item["content"] = [{"type": "output_audio", "transcript": text} if speak else {"type": "output_text", "text": text}]
        if speak:
            await self.send(event("response.output_audio.done", **where))
            await self.send(event("response.output_audio_transcript.done", **where, transcript=text))
            part = {"type": "audio", "transcript": text}
        else:
            await self.send(event("response.output_text.done", **where, text=text))
            part = {"type": "text", "text": text}
        await self.send(event("response.content_part.done", **where, part=part))
        await self.send(event("response.output_item.done", response_id=r.id, output_index=0, item=_public(item)))
        previous = self.items[-2]["id"] if len(self.items) > 1 else None
        await self.send(event("conversation.item.done", previous_item_id=previous, item=_public(item)))
        use = None
        if reply is not None:
            codes = len(reply.audio_codes)
            use = usage(reply.prompt_tokens - reply.audio_slots, reply.audio_slots, len(reply.tokens) - codes, codes)
        await self.send(event("response.done", response=self._response_json(r, status, details, [_public(item)], use),
                              covo_timings=breakdown(timing, reply)))
        if truncated:
            await self.send(event("conversation.item.truncated", item_id=item["id"], content_index=0, audio_end_ms=audio_ms))
        if error is not None and error.code == "context_full":
            await self.send(ProtocolError("the conversation fills the model's context: open a new session to go on",
                                          code="context_full").event())
        elif error is not None and error.code == "invalid_audio":
            await self.send(error.event())
        self._log_turn(r, input_samples, reply, status, timing)
        self.response = None
        if self.respond_after and not self.closed:
            self.respond_after = False
            try:
                await self._start_response({}, time.perf_counter())
            except ProtocolError as e:
                await self.send(e.event())

    def _log_turn(self, r: _Response, input_samples: int, reply: Reply | None, status: str,
                  timing: dict[str, Any]) -> None:
        tokens = 0 if reply is None else len(reply.tokens)
        decode = 0.0 if reply is None else reply.timings.get("decode", 0.0)
        spoken = r.samples_sent / RATE
        wall = 0.0 if reply is None else sum(reply.timings.get(k, 0.0) for k in
                                             ("frontend", "encoder", "adapter", "prefill", "decode", "token2wav", "vocoder"))
        self.metrics.turn(status, timing["first_audio"], tokens, decode)
        ms = lambda s: "-" if s is None else f"{1000 * s:.0f}ms"  # noqa: E731
        log.info("session %s turn %s: input %.2fs, first text %s, first audio %s, %d tokens, audio sent %.3fs, rtf %s, %s",
                 self.config.id, r.id, input_samples / RATE, ms(timing["first_text"]), ms(timing["first_audio"]),
                 tokens, spoken, f"{wall / spoken:.2f}" if spoken else "-", status)

    def _response_json(self, r: _Response, status: str, details: dict[str, Any] | None, output: list[dict[str, Any]],
                       use: dict[str, Any] | None) -> dict[str, Any]:
        return {"id": r.id, "object": "realtime.response", "status": status, "status_details": details,
                "output": output, "conversation_id": self.config.id, "output_modalities": list(r.modalities),
                "max_output_tokens": "inf" if self.config.max_output_tokens is None else self.config.max_output_tokens,
                "audio": {"output": {"format": {"type": "audio/pcm", "rate": RATE}, "voice": self.config.voice}},
                "usage": use, "metadata": None}

    _handlers: dict[str, Callable[[Session, dict[str, Any]], Awaitable[None]]] = {
        "session.update": _session_update,
        "input_audio_buffer.append": _append,
        "input_audio_buffer.commit": _commit,
        "input_audio_buffer.clear": _clear,
        "conversation.item.create": _item_create,
        "conversation.item.truncate": _truncate,
        "conversation.item.delete": _refuse,
        "conversation.item.retrieve": _refuse,
        "response.create": _response_create,
        "response.cancel": _cancel,
        "output_audio_buffer.clear": _refuse,
    }


def breakdown(timing: dict[str, Any], reply: Reply | None) -> dict[str, Any]:
    """`response.done`'s `covo_timings` (this server's addition; clients ignore unknown fields): from the end
    of the user's turn (speech_stopped, or the commit / response.create that ended it) to the turn starting,
    to the first text and audio sent, and the runtime's own per-stage times of the turn, all in ms."""
    ms = lambda s: None if s is None else round(1000 * s, 1)  # noqa: E731
    return {"started_ms": ms(timing.get("started")), "first_text_ms": ms(timing["first_text"]),
            "first_audio_ms": ms(timing["first_audio"]),
            "runtime_ms": {} if reply is None else {k: ms(v) for k, v in reply.timings.items()}}


def _public(item: dict[str, Any]) -> dict[str, Any]:
    """An item as the protocol shows it (without the server's bookkeeping)."""
    return {k: v for k, v in item.items() if not k.startswith("_")}
