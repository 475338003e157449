"""The server side's `covo-edge` subcommands (`serve`, `bench-serve`), registered through the
`covo_edge.commands` entry point; the web stack loads only when one runs (the serve extra)."""

from __future__ import annotations

import argparse

from covo_edge.runtime.cli import add_backend_options, float_above, int_at_least
from covo_edge.runtime.errors import OptionError


def _model(args: argparse.Namespace):
    from covo_edge.runtime import Model

    from .serve import limit_malloc_arenas

    limit_malloc_arenas()  # before the model's threads allocate

    # serve: --max-batch, else one row per session; bench-serve: its largest client count
    max_batch = getattr(args, "max_batch", None) or getattr(args, "max_sessions", None) or max(args.sessions)
    return Model.load(args.artifacts, backend=args.backend, device=args.device, mode=args.mode, engines=args.engines,
                      max_batch=max_batch)


def run_server(args: argparse.Namespace, on_ready=None) -> int:
    """`covo-edge serve` with parsed arguments (the desktop app's too: it opens the page in `on_ready`)."""
    if getattr(args, "cluster", None):
        try:
            from .cluster import run_cluster
        except ImportError:
            raise OptionError("--cluster needs Ray Serve: pip install 'covo-edge[cluster]'") from None
        return run_cluster(args.cluster)
    if args.artifacts is None:
        raise OptionError("give the artifacts to serve (covo-edge serve ART), or --cluster CONFIG")
    from .app import ServeOptions
    from .serve import check_bind, serve
    from .session import Limits

    check_bind(args.host, args.api_key)  # before the model loads: a refused bind costs nothing
    model = _model(args)
    if args.voice is not None:
        model.voice(args.voice)  # an unknown voice fails now, not on the first connection
    limits = Limits(max_input_seconds=args.max_input_seconds, idle_timeout=args.idle_timeout, seed=args.seed)
    options = ServeOptions(max_sessions=args.max_sessions, api_key=args.api_key, voice=args.voice, limits=limits)
    return serve(model, args.host, args.port, options, on_ready)


def _bench_serve(args: argparse.Namespace) -> int:
    from .bench import bench_serve

    return bench_serve(_model(args), args)


def _common(p: argparse.ArgumentParser, artifacts_optional: bool = False) -> None:
    p.add_argument("artifacts", nargs="?" if artifacts_optional else None)
    p.add_argument("--mode", choices=("speech", "text"), default="speech",
                   help="text: load no speech graphs; sessions answer in text only")
    add_backend_options(p)


def add_serve_options(s: argparse.ArgumentParser, cluster: bool = False) -> None:
    _common(s, artifacts_optional=cluster)
    if cluster:
        s.add_argument("--cluster", metavar="CONFIG",
                       help="run the Ray Serve application of this Serve config on this machine (cluster extra; "
                            "README, \"Serve many users\"); the other options are the config's")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (anything but loopback needs --api-key)")
    s.add_argument("--port", type=int_at_least(0), default=8000)
    s.add_argument("--max-sessions", type=int_at_least(1), default=4, help="open sessions at most (default 4)")
    s.add_argument("--max-batch", type=int_at_least(1),
                   help="decode steps of this many sessions run as one backbone call (default: --max-sessions; 1 "
                        "runs each alone); sessions beyond it wait for a row, none is refused for it")
    s.add_argument("--api-key", help="clients must send this key (Bearer header or the browser subprotocol)")
    s.add_argument("--max-input-seconds", type=float_above(0), default=60.0,
                   help="input audio one turn may hold (default 60)")
    s.add_argument("--idle-timeout", type=float_above(0), default=600.0,
                   help="close a session after this many seconds without a client event (default 600)")
    s.add_argument("--seed", type=int_at_least(0), help="reproducible replies: turn n of a session uses seed + n")


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="a realtime voice server (OpenAI Realtime protocol over WebSocket; serve extra)")
    add_serve_options(s, cluster=True)
    s.set_defaults(run=run_server, extra="serve")

    b = sub.add_parser("bench-serve", help="first-audio latency and throughput of the server with N concurrent "
                                           "clients on loopback, beside the runtime's own (serve extra); JSON")
    _common(b)
    b.add_argument("--sessions", type=int_at_least(1), nargs="+", default=[1, 2, 4], help="client counts (default 1 2 4)")
    b.add_argument("--memory", type=int_at_least(1), nargs="*", default=[1, 4, 16],
                   help="resident memory with this many sessions open, each after one turn (default 1 4 16)")
    b.add_argument("--input", help="the question, a wav file (default: a 2 s synthetic utterance)")
    b.add_argument("--turns", type=int_at_least(1), default=3, help="turns per client (default 3)")
    b.add_argument("--max-output-tokens", type=int_at_least(1), default=64, help="per reply (default 64)")
    b.add_argument("--silence-ms", type=int_at_least(100), default=500, help="server VAD's silence_duration_ms")
    b.add_argument("--json", help="also write the measurements here")
    b.add_argument("--chart", help="also draw the latencies to this image (needs matplotlib)")
    b.set_defaults(run=_bench_serve, extra="serve")
