"""The engines side's `covo-edge` subcommands (`build`, `verify`), registered through the `covo_edge.commands`
entry point (pyproject.toml). Registering imports nothing heavy: TensorRT loads when a command runs, and
an install without the engines extra is told which extra it lacks."""

from __future__ import annotations

import argparse

from covo_edge.runtime.cli import int_at_least
from covo_edge.runtime.engines_manifest import TARGETS


def _build(args: argparse.Namespace) -> int:
    from .build import parse_compute_capability
    from .folder import BuildOptions, build_engines, trtexec_lines

    options = BuildOptions(args.target, args.graphs, args.max_context, args.max_batch,
                           tuple(parse_compute_capability(c) for c in args.compute_capability or ()))
    if args.print_trtexec:
        print("\n".join(trtexec_lines(args.artifacts, args.output, options)))
        return 0
    report = build_engines(args.artifacts, args.output, options, progress=not args.quiet)
    for g, e in report.index.engines.items():
        what = "built" if g in report.built else "kept " if g in report.kept else "other"
        print(f"{what} {e.file:<28} {e.bytes / 1e6:8.1f} MB  {e.recipe.precision:<8} {len(e.recipe.profiles)} "
              f"profile(s)  {e.build_seconds:6.1f} s")
    print(f"wrote {args.output}: {len(report.built)} built, {len(report.kept)} unchanged and kept")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .verify import run_verify

    return run_verify(args.artifacts, args.engines)


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("build", help="TensorRT engines of the artifacts' graphs, with engines.json (engines extra)")
    b.add_argument("artifacts")
    b.add_argument("-o", "--output", required=True, help="engines folder (an earlier build's is updated in place)")
    b.add_argument("--target", choices=TARGETS, default="rtx",
                   help="rtx: TensorRT-RTX, built here without a GPU, for RTX desktops (Ampere, Ada, Blackwell); "
                        "tensorrt: TensorRT 10/11 on the GPU the engines are for (Jetson, datacenter)")
    b.add_argument("--graphs", nargs="+", help="only these graphs (default: all)")
    b.add_argument("--max-context", type=int_at_least(1), help="shrink the LLM graphs' profiles to this many tokens")
    b.add_argument("--max-batch", type=int_at_least(1),
                   help="the backbone's largest batch: conversations decoding together (serve --max-batch); other "
                        "graphs' batches are cut to it, never below what the runtime feeds")
    b.add_argument("--compute-capability", action="append", metavar="CC",
                   help="rtx only: build for this GPU generation (8.6, 8.9, 12.0; repeatable; default portable)")
    b.add_argument("--print-trtexec", action="store_true", help="print the equivalent trtexec command lines, build nothing")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(run=_build, extra="engines")

    v = sub.add_parser("verify", help="every engine against ONNX Runtime on the same inputs (engines extra, a GPU)")
    v.add_argument("artifacts")
    v.add_argument("--engines", required=True, help="the folder `covo-edge build` wrote")
    v.set_defaults(run=_verify, extra="engines")
