"""The OpenAI Realtime protocol (GA) as this server speaks it: the session configuration and how a
`session.update` merges into it, the server events' shapes, and the errors a client gets.

The wire facts (event names, shapes, defaults) are in ../shared/notes/realtime-protocol.md; what the
model cannot honour is refused field by field with an `error` that says so, and the rest applies.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Callable

RATE = 24000  # audio/pcm in GA: 16-bit little-endian mono at 24 kHz, both ways
PCM_FORMAT = {"type": "audio/pcm", "rate": RATE}
MAX_OUTPUT_TOKENS = 4096  # the protocol's cap on max_output_tokens (or "inf")


def new_id(prefix: str) -> str:
    """A unique id in OpenAI's style (`event_…`, `item_…`, `resp_…`, `sess_…`)."""
    return f"{prefix}_{secrets.token_hex(10)}"


_counter = itertools.count()


def event(kind: str, **fields: Any) -> dict[str, Any]:
    """A server event: its type, a unique event_id, its fields."""
    return {"type": kind, "event_id": f"event_{next(_counter):x}{secrets.token_hex(6)}", **fields}


@dataclass
class ProtocolError(Exception):
    """What the client did wrong, sent back as an `error` event; the session goes on."""

    message: str
    code: str = "invalid_request_error"
    param: str | None = None
    type: str = "invalid_request_error"

    def event(self, client_event_id: str | None = None) -> dict[str, Any]:
        error = {"type": self.type, "code": self.code, "message": self.message, "param": self.param,
                 "event_id": client_event_id}
        return event("error", error=error)


@dataclass
class TurnDetection:
    """`audio.input.turn_detection` of type server_vad (None in the session: manual turns)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": "server_vad", "threshold": self.threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms, "create_response": self.create_response,
                "interrupt_response": self.interrupt_response, "idle_timeout_ms": self.idle_timeout_ms}


@dataclass
class SessionConfig:
    """A realtime session's settings: what `session.created` and `session.updated` carry."""

    id: str
    model: str
    instructions: str
    voice: str | None  # None: the model was loaded for text only
    voices: tuple[str, ...]
    output_modalities: tuple[str, ...] = ("audio",)
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    max_output_tokens: int | None = None  # None: "inf" (the model's own cap and the context bound it)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "realtime", "object": "realtime.session", "id": self.id, "model": self.model,
            "output_modalities": list(self.output_modalities), "instructions": self.instructions,
            "audio": {
                "input": {"format": dict(PCM_FORMAT), "transcription": None, "noise_reduction": None,
                          "turn_detection": None if self.turn_detection is None else self.turn_detection.to_json()},
                "output": {"format": dict(PCM_FORMAT), "voice": self.voice, "speed": 1.0},
            },
            "tools": [], "tool_choice": "auto", "tracing": None, "truncation": "disabled", "prompt": None,
            "include": None, "max_output_tokens": "inf" if self.max_output_tokens is None else self.max_output_tokens,
        }

    def updated(self, patch: Any, voice_locked: bool) -> tuple[SessionConfig, list[ProtocolError]]:
        """This config with `patch` (a GA session object) deep-merged: each field is applied on its own, and
        each one that cannot be is left as it was and reported."""
        if not isinstance(patch, dict):
            return self, [ProtocolError("session must be an object", param="session")]
        new, problems = replace(self), []
        for path, value in _leaves(patch):
            setter = _SETTERS.get(path)
            try:
                if setter is None:
                    raise ProtocolError(f"unknown session field {'.'.join(path)}", code="unknown_parameter")
                if path == ("audio", "output", "voice") and voice_locked and _voice_name(value) != self.voice:
                    raise ProtocolError("the voice cannot change after the session has produced audio",
                                        code="cannot_update_voice")
                new = setter(new, value)
            except ProtocolError as e:
                problems.append(replace(e, param="session." + ".".join(path)))
        return new, problems


def _leaves(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """The patch's leaves; turn_detection is one leaf (an object or null), as are voice and format."""
    out = []
    for k, v in d.items():
        path = (*prefix, k)
        if isinstance(v, dict) and path not in _WHOLE:
            out += _leaves(v, path)
        else:
            out.append((path, v))
    return out


_WHOLE = {("audio", "input", "turn_detection"), ("audio", "input", "format"), ("audio", "output", "format"),
          ("audio", "output", "voice"), ("audio", "input", "transcription"), ("audio", "input", "noise_reduction"),
          ("tracing",), ("prompt",), ("tool_choice",)}


def _only(allowed: Any, what: str) -> Callable[[SessionConfig, Any], SessionConfig]:
    """A field the model honours only at one value: that value is accepted, any other refused."""

    def check(c: SessionConfig, value: Any) -> SessionConfig:
        if value != allowed:
            raise ProtocolError(f"{what} (got {value!r})", code="unsupported_parameter")
        return c

    return check


def _type(c: SessionConfig, value: Any) -> SessionConfig:
    if value != "realtime":
        raise ProtocolError(f"this server serves realtime sessions only, got type {value!r}", code="unsupported_parameter")
    return c


def _modalities(c: SessionConfig, value: Any) -> SessionConfig:
    if value not in (["audio"], ["text"]):
        raise ProtocolError(f'output_modalities must be ["audio"] or ["text"], got {value!r}')
    if value == ["audio"] and c.voice is None:
        raise ProtocolError("this server was started with --mode text: it answers in text only",
                            code="unsupported_parameter")
    return replace(c, output_modalities=tuple(value))


def _instructions(c: SessionConfig, value: Any) -> SessionConfig:
    if value != c.instructions:
        raise ProtocolError("the model's system prompt is fixed: Covo-Audio-Chat was trained with it, and other "
                            "instructions are not honoured (leave instructions unset)", code="unsupported_parameter")
    return c


def _voice_name(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else value


def _voice(c: SessionConfig, value: Any) -> SessionConfig:
    name = _voice_name(value)
    if c.voice is None:
        raise ProtocolError("this server was started with --mode text: it has no voices", code="unsupported_parameter")
    if name not in c.voices:
        raise ProtocolError(f"unknown voice {name!r}: this model ships {', '.join(c.voices)}", code="invalid_value")
    return replace(c, voice=name)


def _format(c: SessionConfig, value: Any) -> SessionConfig:
    if not isinstance(value, dict) or value.get("type") != "audio/pcm" or value.get("rate", RATE) != RATE:
        raise ProtocolError(f"only audio/pcm at 24000 Hz is supported, got {value!r}", code="unsupported_parameter")
    return c


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ProtocolError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}", code="invalid_value")
    return value


def _turn_detection(c: SessionConfig, value: Any) -> SessionConfig:
    if value is None:
        return replace(c, turn_detection=None)
    if not isinstance(value, dict):
        raise ProtocolError(f"turn_detection must be an object or null, got {value!r}")
    kind = value.get("type", "server_vad")
    if kind != "server_vad":
        raise ProtocolError(f"turn_detection type {kind!r} is not supported: use server_vad or null",
                            code="unsupported_parameter")
    td = replace(c.turn_detection or TurnDetection())
    for key, v in value.items():
        if key == "type":
            continue
        if key == "threshold":
            td.threshold = float(_number(v, key, 0.0, 1.0))
        elif key in ("prefix_padding_ms", "silence_duration_ms"):
            setattr(td, key, int(_number(v, key, 0, 10000)))
        elif key in ("create_response", "interrupt_response"):
            if not isinstance(v, bool):
                raise ProtocolError(f"{key} must be true or false, got {v!r}", code="invalid_value")
            setattr(td, key, v)
        elif key == "idle_timeout_ms":
            if v is not None:
                raise ProtocolError("idle_timeout_ms is not supported (leave it null)", code="unsupported_parameter")
        else:
            raise ProtocolError(f"unknown turn_detection field {key!r}", code="unknown_parameter")
    return replace(c, turn_detection=td)


def _max_output_tokens(c: SessionConfig, value: Any) -> SessionConfig:
    return replace(c, max_output_tokens=max_output_tokens(value))


def max_output_tokens(value: Any) -> int | None:
    """An int 1..4096, or "inf" (None)."""
    if value == "inf":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OUTPUT_TOKENS:
        raise ProtocolError(f'max_output_tokens must be an integer from 1 to {MAX_OUTPUT_TOKENS} or "inf", got {value!r}',
                            code="invalid_value")
    return value


def _tools(c: SessionConfig, value: Any) -> SessionConfig:
    if value:
        raise ProtocolError("tools are not supported: Covo-Audio-Chat does not call functions", code="unsupported_parameter")
    return c


def _any(c: SessionConfig, value: Any) -> SessionConfig:
    return c


_SETTERS: dict[tuple[str, ...], Callable[[SessionConfig, Any], SessionConfig]] = {
    ("type",): _type,
    ("model",): _any,
    ("id",): _any,
    ("object",): _any,
    ("output_modalities",): _modalities,
    ("instructions",): _instructions,
    ("audio", "input", "format"): _format,
    ("audio", "output", "format"): _format,
    ("audio", "output", "voice"): _voice,
    ("audio", "output", "speed"): _only(1.0, "speed other than 1.0 is not supported"),
    ("audio", "input", "turn_detection"): _turn_detection,
    ("audio", "input", "transcription"): _only(None, "input transcription is not supported: the model hears the "
                                                     "audio itself (leave transcription null)"),
    ("audio", "input", "noise_reduction"): _only(None, "noise reduction is not supported (leave it null)"),
    ("max_output_tokens",): _max_output_tokens,
    ("tools",): _tools,
    ("tool_choice",): _any,
    ("tracing",): _only(None, "tracing is not supported (leave it null)"),
    ("truncation",): _only("disabled", "truncation is not supported: a full context ends the session"),
    ("include",): _any,
    ("prompt",): _only(None, "stored prompts are not supported (leave prompt null)"),
}


def usage(input_text: int, input_audio: int, output_text: int, output_audio: int) -> dict[str, Any]:
    """`response.usage`: token counts, audio tokens apart (input audio: the question's audio slots)."""
    return {
        "total_tokens": input_text + input_audio + output_text + output_audio,
        "input_tokens": input_text + input_audio, "output_tokens": output_text + output_audio,
        "input_token_details": {"text_tokens": input_text, "audio_tokens": input_audio, "cached_tokens": 0},
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    }
