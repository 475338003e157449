"""The ASGI application: `GET /v1/realtime` (WebSocket, the OpenAI Realtime protocol), `GET /healthz`,
`GET /metrics`, and the page at `GET /` (`page/`: it talks to `/v1/realtime` like any other client). One loaded `Model`, a `Session` per connection. Being plain ASGI, it runs on uvicorn
(`covo-edge serve`) or mounts in another ASGI host unchanged."""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from covo_edge.runtime import Model

from .metrics import Metrics, MetricsSink
from .protocol import ProtocolError
from .session import Limits, Session

KEY_PROTOCOL = "openai-insecure-api-key."  # browsers send the key as a WebSocket subprotocol
PAGE = Path(__file__).parent / "page"  # the browser page: plain HTML, CSS and JS modules, no build step


@dataclass
class ServeOptions:
    max_sessions: int = 4
    api_key: str | None = None  # None: any key (or none) is accepted
    voice: str | None = None  # the sessions' default voice (default: the model's first)
    limits: Limits = field(default_factory=Limits)
    replica: str | None = None  # this server's name among many (Ray Serve): /healthz and the x-covo-replica header
    metrics_sink: MetricsSink | None = None  # where the metrics also go (Ray Serve's, per replica)


class Realtime:
    """The server's state: the model, the open sessions, the metrics; `drain` ends them all (SIGTERM)."""

    def __init__(self, model: Model, options: ServeOptions):
        self.model = model
        self.options = options
        self.metrics = Metrics(options.max_sessions, options.metrics_sink)
        self.sessions: dict[Session, WebSocket] = {}
        self.draining = False

    async def drain(self, grace_s: float = 0.0) -> None:
        """Stop admitting; give running responses up to `grace_s` to finish, end the rest `cancelled`; every
        socket closes with 1001 (going away)."""
        self.draining = True
        deadline = asyncio.get_running_loop().time() + grace_s
        while any(s.response is not None for s in self.sessions) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for session, ws in list(self.sessions.items()):
            await session.close("server_shutdown")
            try:
                await ws.close(code=1001, reason="server shutting down")
            except RuntimeError:  # the client closed it meanwhile
                pass

    def authorized(self, ws: WebSocket) -> bool:
        if self.options.api_key is None:
            return True
        header = ws.headers.get("authorization", "")
        keys = [header[7:].strip()] if header.lower().startswith("bearer ") else []
        keys += [p[len(KEY_PROTOCOL):] for p in ws.scope.get("subprotocols", []) if p.startswith(KEY_PROTOCOL)]
        return any(secrets.compare_digest(k.encode(), self.options.api_key.encode()) for k in keys)

    async def refuse(self, ws: WebSocket, error: ProtocolError, code: int) -> None:
        await ws.send_text(json.dumps(error.event()))
        self.metrics.errors[error.code] += 1
        await ws.close(code=code, reason=error.code)

    async def turn_away(self, ws: WebSocket, error: ProtocolError) -> None:
        """A connection refused before its session starts (a wrong key, a full server): counted as refused."""
        self.metrics.turned_away(error.code)
        await self.refuse(ws, error, 1008)

    async def realtime(self, ws: WebSocket) -> None:
        headers = [(b"x-covo-replica", self.options.replica.encode())] if self.options.replica else None
        await ws.accept(subprotocol="realtime" if "realtime" in ws.scope.get("subprotocols", []) else None,
                        headers=headers)
        if not self.authorized(ws):
            return await self.turn_away(ws, ProtocolError("invalid API key: pass the key given to `covo-edge serve "
                                                          "--api-key`", code="invalid_api_key"))
        if self.draining:
            return await ws.close(code=1001, reason="server shutting down")
        if len(self.sessions) >= self.options.max_sessions:
            return await self.turn_away(ws, ProtocolError(
                f"this server holds {self.options.max_sessions} sessions at most (--max-sessions), all open: try "
                "again later", code="session_limit_reached"))
        session = Session(self.model, lambda m: ws.send_text(json.dumps(m)), self.options.limits, self.metrics,
                          self.options.voice, ws.query_params.get("model", "covo-audio-chat"))
        self.sessions[session] = ws
        self.metrics.sessions_total += 1
        self.metrics.sessions(len(self.sessions))
        try:
            await session.start()
            await self._serve(ws, session)
        except WebSocketDisconnect:
            pass
        finally:
            await session.close("client_gone")
            self.sessions.pop(session, None)
            self.metrics.sessions(len(self.sessions))

    async def _serve(self, ws: WebSocket, session: Session) -> None:
        idle = session.limits.idle_timeout
        while not session.closed:
            try:
                message = await asyncio.wait_for(ws.receive(), timeout=idle)
            except asyncio.TimeoutError:
                if session.response is not None:
                    continue
                return await self.refuse(ws, ProtocolError(f"no client event for {idle:g} s: the session is closed",
                                                           code="session_idle_timeout"), 1000)
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is None:
                await session.send(ProtocolError("send client events as JSON text frames, not binary",
                                                 code="invalid_json").event())
                continue
            await session.handle(message["text"])

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "draining" if self.draining else "ok", "sessions": len(self.sessions),
                             "max_sessions": self.options.max_sessions, "mode": self.model.mode,
                             **({"replica": self.options.replica} if self.options.replica else {}),
                             "voices": list(self.model.manifest.voices) if self.model.mode == "speech" else []})

    async def metrics_text(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse(self.metrics.render(len(self.sessions)), media_type="text/plain; version=0.0.4")


async def page(request: Request) -> FileResponse:
    return FileResponse(PAGE / "index.html")


def create_app(model: Model, options: ServeOptions | None = None) -> Starlette:
    """The ASGI app serving `model`; `app.state.realtime` is its `Realtime` (drain it before stopping)."""
    realtime = Realtime(model, options or ServeOptions())
    app = Starlette(routes=[
        WebSocketRoute("/v1/realtime", realtime.realtime),
        Route("/healthz", realtime.healthz),
        Route("/metrics", realtime.metrics_text),
        Route("/", page),
        Mount("/page", StaticFiles(directory=PAGE)),
    ])
    app.state.realtime = realtime
    return app
