"""`covo-edge serve`: load the model once, serve the realtime app on uvicorn, drain on SIGTERM.

SIGTERM (or Ctrl-C): running responses end `cancelled`, every socket closes with 1001, the process exits
0. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import logging
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn

from covo_edge.runtime import Model
from covo_edge.runtime.errors import OptionError

from .app import ServeOptions, create_app

WS_MAX_SIZE = 16 * 1024 * 1024  # one input_audio_buffer.append may carry 15 MiB (the SDK's own bound)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own heap (up to 8 per core), and a heap keeps what a turn
    freed: with a worker thread per turn, resident memory then grows by tens of MB per session (measured
    16 MB on the tiny model, 131 MB on the small one). Two heaps keep it to what sessions hold. A no-op
    off glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    if not is_loopback(host) and not api_key:
        raise OptionError(f"binding {host} opens the server beyond this machine: pass --api-key KEY (clients then "
                          "send it as their API key), or bind 127.0.0.1")


class _Server(uvicorn.Server):
    """uvicorn, but a signal first drains the sessions, and is not re-raised afterwards (exit status 0)."""

    def __init__(self, config: uvicorn.Config, app, on_ready: Callable[[str], None] | None = None) -> None:
        super().__init__(config)
        self.realtime = app.state.realtime
        self.on_ready = on_ready
        self.loop: asyncio.AbstractEventLoop | None = None
        self.draining = False

    async def serve(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.on_ready is not None:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.on_ready(f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/")

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.draining or self.loop is None:
            self.should_exit = self.force_exit = True
            return
        self.draining = True
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._drain()))  # signal-safe hand-off

    async def _drain(self) -> None:
        try:
            await asyncio.wait_for(self.realtime.drain(), timeout=30)
        finally:
            self.should_exit = True


def serve(model: Model, host: str, port: int, options: ServeOptions,
          on_ready: Callable[[str], None] | None = None) -> int:
    """Serve until SIGTERM or Ctrl-C; `on_ready(url)` once it listens (port 0: a free one)."""
    check_bind(host, options.api_key)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    app = create_app(model, options)
    config = uvicorn.Config(app, host=host, port=port, ws="websockets-sansio", ws_max_size=WS_MAX_SIZE, log_level="info",
                            access_log=False, lifespan="off", timeout_graceful_shutdown=10)
    server = _Server(config, app, on_ready)
    server.run()
    return 0 if server.started else 2
