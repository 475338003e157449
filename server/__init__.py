"""The realtime voice server: the OpenAI Realtime protocol (GA) over WebSocket on one loaded `Model`
(`covo-edge serve`; the serve extra). `create_app(model)` is the ASGI app, to run on uvicorn or mount in
another ASGI host. Importing this package loads no web stack: the CLI registers its commands cheaply."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
