"""The export side's `covo-edge` subcommands, registered through the `covo_edge.commands` entry point
(pyproject.toml). Registering imports nothing heavy: torch loads when a command runs, and a runtime-only
install is told which extra it lacks."""

from __future__ import annotations

import argparse

from covo_edge.runtime.cli import int_at_least


def _make_tiny(args: argparse.Namespace) -> int:
    from .tiny import make_tiny

    out = make_tiny(args.out_dir, seed=args.seed, size=args.size, force=args.force, layers=args.layers)
    print(f"wrote a random-weight {args.size} release to {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .exporter import export_release

    out = export_release(args.model_dir, args.output, dtype=args.dtype, voices=args.voice,
                         max_context=args.max_context, force=args.force)
    print(f"wrote {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.model_dir, args.input, args.output, mode=args.mode, max_new_tokens=args.max_new_tokens,
                    seed=args.seed)


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    run_bench(args.model_dir, args.artifacts, args.input, args.new_tokens, args.json, args.chart, args.compare or [])
    return 0


def _bench_kv(args: argparse.Namespace) -> int:
    from .bench_kv import run_bench_kv

    run_bench_kv(args.history, args.rounds, args.layers, args.vocab)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("make-tiny", help="write a random-weight release of the exact architecture (export extra)")
    t.add_argument("out_dir")
    t.add_argument("--seed", type=int_at_least(0), default=0)
    t.add_argument("--size", choices=("tiny", "small", "wide"), default="tiny",
                   help="small = Qwen2.5-0.5B-shaped backbone; wide = every part at the released width, 2 backbone "
                        "layers (6.2 GB)")
    t.add_argument("--layers", type=int_at_least(1), help="backbone layers (default: the size's; wide: 2)")
    t.add_argument("--force", action="store_true", help="replace an earlier make-tiny in OUT_DIR")
    t.set_defaults(run=_make_tiny, extra="export")

    e = sub.add_parser("export", help="release directory -> ONNX graphs + manifest.json (export extra)")
    e.add_argument("model_dir")
    e.add_argument("-o", "--output", required=True, help="artifacts directory to create")
    e.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    e.add_argument("--max-context", type=int_at_least(1), default=8192,
                   help="longest conversation in tokens (KV cache size), 256 or more")
    e.add_argument("--voice", action="append", help="voice name or prompt dir to ship (repeatable; default: the release's default)")
    e.add_argument("--force", action="store_true", help="replace an earlier export in OUTPUT")
    e.set_defaults(run=_export, extra="export")

    b = sub.add_parser("bench", help="time to first audio, decode vs its floor, speech RTF, memory: runtime and "
                                     "PyTorch reference in one run, JSON + chart (export extra)")
    b.add_argument("--model-dir", required=True)
    b.add_argument("--artifacts", required=True)
    b.add_argument("--input", help="question audio (default: a synthetic 8.2 s utterance)")
    b.add_argument("--new-tokens", type=int_at_least(20), default=100,
                   help="forced reply length: 5 text ids, then 15 audio codes, repeated")
    b.add_argument("--json", help="also write the results here")
    b.add_argument("--chart", help="draw them here (.png or .svg)")
    b.add_argument("--compare", action="append", metavar="ART",
                   help="other artifacts of the same model (fp16, `covo-edge quantize` output) whose decode speed is "
                        "measured beside --artifacts' in the same run (repeatable)")
    b.set_defaults(run=_bench, extra="export")

    k = sub.add_parser("bench-kv", help="does a KV cache updated in place pay on ONNX Runtime CPU? (export extra)")
    k.add_argument("--history", type=int_at_least(0), nargs="+", default=[2048, 6144], help="history lengths, tokens")
    k.add_argument("--rounds", type=int_at_least(1), default=20, help="timed steps per form and history (median)")
    k.add_argument("--layers", type=int_at_least(1), default=24, help="decoder layers (24: the small release's shape)")
    k.add_argument("--vocab", type=int_at_least(1), default=168055, help="LM head rows (168055: the release's vocabulary)")
    k.set_defaults(run=_bench_kv, extra="export")

    d = sub.add_parser("demo", help="answer one spoken question with the PyTorch reference (export extra)")
    d.add_argument("--model-dir", required=True, help="release directory (e.g. from make-tiny)")
    d.add_argument("--input", help="question audio (default: a synthetic 3 s utterance)")
    d.add_argument("--output", default="reply.wav", help="where to write the 24 kHz answer")
    d.add_argument("--mode", choices=("speech", "text"), default="speech")
    d.add_argument("--max-new-tokens", type=int_at_least(1), default=60)
    d.add_argument("--seed", type=int_at_least(0), default=0)
    d.set_defaults(run=_demo, extra="export")
