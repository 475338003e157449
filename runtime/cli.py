"""`covo-edge`: one command line for every side of the project.

The runtime owns the command and its own subcommands (chat, token2wav, check, bench-batch). The other sides add
theirs through the `covo_edge.commands` entry-point group (pyproject.toml): each entry is a
`register(subparsers)` function, so the runtime imports nothing of theirs, and a runtime-only install
lists their commands but says which extra they need when run.

Exit status: 0 done; 1 the command ran but found a problem (`check` failures, a speech turn without
audio codes); 2 bad input or usage, one line on stderr naming the problem and the fix, nothing written.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from importlib.metadata import entry_points

from .errors import CovoEdgeError, os_reason

COMMAND_GROUP = "covo_edge.commands"


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (no usage dump), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message}\n")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum (the wording of errors.at_least)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer of at least {minimum}, got {text!r}")
        return value

    return parse


def float_above(minimum: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value > minimum or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a number above {minimum:g}, got {text!r}")
        return value

    return parse


def shorten(text: str, limit: int = 200) -> str:
    """A reply's text for the terminal: a Python literal cut to `limit` characters, the full length said."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def add_backend_options(p: argparse.ArgumentParser) -> None:
    from .backends import BACKENDS, DEVICES

    p.add_argument("--backend", default="onnxruntime", choices=BACKENDS)
    p.add_argument("--device", default="cpu", choices=DEVICES, help="for onnxruntime (tensorrt always runs on the GPU)")
    p.add_argument("--engines", help="with --backend tensorrt: the folder `covo-edge build` wrote")
    p.add_argument("--voice", help="voice name from the manifest (default: the first)")


def _chat(args: argparse.Namespace) -> int:
    from .chat import chat

    return chat(args.artifacts, args.input, args.output_dir, mode=args.mode, greedy=True if args.greedy else None,
                seed=args.seed, max_new_tokens=args.max_new_tokens, force_tokens=args.force_tokens, noise=args.noise,
                dump=args.dump, dump_logits=args.dump_logits, voice=args.voice, stream=args.stream,
                backend=args.backend, device=args.device, engines=args.engines)


def _token2wav(args: argparse.Namespace) -> int:
    from .chat import token2wav

    return token2wav(args.artifacts, args.codes, args.output, noise=args.noise, voice=args.voice, seed=args.seed,
                     backend=args.backend, device=args.device, engines=args.engines)


def _check(args: argparse.Namespace) -> int:
    from .check import run_check

    return run_check(args.artifacts, backend=args.backend, device=args.device, engines=args.engines)


def _bench_batch(args: argparse.Namespace) -> int:
    import json

    from .bench_batch import bench_batch, summary

    result = bench_batch(args.artifacts, args.sessions, args.new_tokens, args.json, backend=args.backend,
                         device=args.device, engines=args.engines)
    print(summary(result), file=sys.stderr)
    print(json.dumps(result))
    return 0


def _dump_logits(text: str) -> int | str:
    return "all" if text == "all" else int_at_least(1)(text)


def register(sub: argparse._SubParsersAction) -> None:
    """The runtime's own subcommands."""
    c = sub.add_parser("chat", help="answer spoken turns from exported artifacts (no torch)")
    c.add_argument("artifacts")
    c.add_argument("--input", action="append", required=True, help="question audio, one per turn (repeatable)")
    c.add_argument("--output-dir", default="out", help="where turn_N.wav go")
    c.add_argument("--mode", choices=("speech", "text"), default="speech")
    c.add_argument("--stream", action="store_true",
                   help="speak while the reply decodes (streaming token2wav): turn_N.wav.part grows chunk by chunk, "
                        "and the time to the first audio is printed (default: exact token2wav, written at the end)")
    c.add_argument("--greedy", action="store_true", help="greedy on every turn (default: greedy first turn only)")
    c.add_argument("--seed", type=int_at_least(0), help="sampling and ODE-noise seed (turn n uses seed + n)")
    c.add_argument("--max-new-tokens", type=int_at_least(1))
    c.add_argument("--force-tokens", action="append", help="tokens .npy to replay instead of sampling, one per turn")
    c.add_argument("--noise", action="append", help="ODE noise .npy [1, 4*(P+N), 64], one per turn")
    c.add_argument("--dump", help="write every turn's intermediates to this .npz (compressed)")
    c.add_argument("--dump-logits", type=_dump_logits, default=0, metavar="K|all",
                   help="with --dump: each decode step's top-K logits (ids and values), or all of them")
    add_backend_options(c)
    c.set_defaults(run=_chat)

    w = sub.add_parser("token2wav", help="vocode given audio codes (no torch)")
    w.add_argument("artifacts")
    w.add_argument("--codes", required=True, help=".npy of audio codes, 1-D integers 0..16383")
    w.add_argument("--noise", help=".npy ODE noise [1, 4*(P+N), 64]")
    w.add_argument("--seed", type=int_at_least(0), default=0)
    w.add_argument("-o", "--output", required=True)
    add_backend_options(w)
    w.set_defaults(run=_token2wav)

    b = sub.add_parser("bench-batch", help="decode throughput, step latency and first audio of N conversations at "
                                           "once (steps batched) beside one at a time; JSON (no torch)")
    b.add_argument("artifacts")
    b.add_argument("--sessions", type=int_at_least(1), nargs="+", default=[1, 2, 4, 8],
                   help="numbers of concurrent conversations to measure (default 1 2 4 8)")
    b.add_argument("--new-tokens", type=int_at_least(20), default=60,
                   help="forced reply length per conversation: 5 text ids, then 15 audio codes, repeated")
    b.add_argument("--json", help="also write the results here")
    add_backend_options(b)
    b.set_defaults(run=_bench_batch)

    k = sub.add_parser("check", help="verify every checksum and run each graph once on tiny inputs")
    k.add_argument("artifacts")
    add_backend_options(k)
    k.set_defaults(run=_check)


Register = Callable[[argparse._SubParsersAction], None]


def build_parser(sides: list[Register] | None = None, prog: str = "covo-edge") -> Parser:
    """The runtime's subcommands and every side's (from the entry points, or `sides` where there is no
    package metadata to read them from: a frozen desktop build)."""
    p = Parser(prog=prog, description="Covo-Audio-Chat on one local GPU or a CPU.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(sub)
    if sides is not None:
        for side in sides:
            side(sub)
        return p
    for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except Exception as e:  # a broken side must not take the runtime's commands down with it
            print(f"covo-edge: the {ep.name} commands are unavailable ({e})", file=sys.stderr)
    return p


def _fail(command: str, message: str) -> int:
    print(f"covo-edge {command}: {message}", file=sys.stderr)
    return 2


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: staged outputs are removed, nothing half-written stays


def main(argv: list[str] | None = None, sides: list[Register] | None = None, prog: str = "covo-edge") -> int:
    args = build_parser(sides, prog).parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return args.run(args) or 0
    except CovoEdgeError as e:
        return _fail(args.command, str(e))
    except OSError as e:  # reading or writing a file: permission, disk full, a directory in the way
        return _fail(args.command, f"{e.filename}: {os_reason(e)}" if e.filename else os_reason(e))
    except ModuleNotFoundError as e:
        extra = getattr(args, "extra", None)
        if extra is None:
            raise
        return _fail(args.command, f"needs the {extra} extra ({e.name} is missing): pip install 'covo-edge[{extra}]'")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
