"""`covo-edge`: one command line; each subcommand imports its stage lazily (the runtime never loads torch)."""

from __future__ import annotations

import argparse
import sys


def _make_tiny(args: argparse.Namespace) -> None:
    from covo_edge.export.tiny import make_tiny

    out = make_tiny(args.out_dir, seed=args.seed, size=args.size)
    print(f"wrote a random-weight {args.size} release to {out}")


def _demo(args: argparse.Namespace) -> None:
    from covo_edge.export.demo import run_demo

    run_demo(args.model_dir, args.input, args.output, mode=args.mode, max_new_tokens=args.max_new_tokens, seed=args.seed)


def _export(args: argparse.Namespace) -> None:
    from covo_edge.export.exporter import export_release

    out = export_release(args.model_dir, args.output, dtype=args.dtype, voices=args.voice,
                         max_context=args.max_context)
    print(f"wrote {out}")


def _bench(args: argparse.Namespace) -> None:
    from covo_edge.export.bench import run_bench

    run_bench(args.model_dir, args.artifacts, args.seconds, args.tokens, args.repeats, args.svg)


def _chat(args: argparse.Namespace) -> None:
    from .chat import chat

    chat(args.artifacts, args.input, args.output_dir, mode=args.mode, greedy=True if args.greedy else None,
         seed=args.seed, max_new_tokens=args.max_new_tokens, force_tokens=args.force_tokens, noise=args.noise,
         dump=args.dump, voice=args.voice, backend=args.backend, device=args.device)


def _token2wav(args: argparse.Namespace) -> None:
    from .chat import token2wav

    token2wav(args.artifacts, args.codes, args.output, noise=args.noise, voice=args.voice, seed=args.seed,
              backend=args.backend, device=args.device)


def _add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="onnxruntime", choices=("onnxruntime",))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--voice", help="voice name from the manifest (default: the first)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="covo-edge", description="Covo-Audio-Chat on one local GPU or a CPU.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("make-tiny", help="write a random-weight release of the exact architecture (offline)")
    t.add_argument("out_dir")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--size", choices=("tiny", "small"), default="tiny", help="small = Qwen2.5-0.5B-shaped backbone")
    t.set_defaults(run=_make_tiny)

    e = sub.add_parser("export", help="release directory -> ONNX graphs + manifest.json (export extra)")
    e.add_argument("model_dir")
    e.add_argument("-o", "--output", required=True, help="artifacts directory to create")
    e.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    e.add_argument("--max-context", type=int, default=8192, help="longest conversation in tokens (KV cache size)")
    e.add_argument("--voice", action="append", help="voice name or prompt dir to ship (repeatable; default: the release's default)")
    e.set_defaults(run=_export)

    c = sub.add_parser("chat", help="answer spoken turns from exported artifacts (no torch)")
    c.add_argument("artifacts")
    c.add_argument("--input", action="append", required=True, help="question wav, one per turn (repeatable)")
    c.add_argument("--output-dir", default="out", help="where turn_N.wav go")
    c.add_argument("--mode", choices=("speech", "text"), default="speech")
    c.add_argument("--greedy", action="store_true", help="greedy on every turn (default: greedy first turn only)")
    c.add_argument("--seed", type=int, help="sampling and ODE-noise seed (turn n uses seed + n)")
    c.add_argument("--max-new-tokens", type=int)
    c.add_argument("--force-tokens", action="append", help="tokens .npy to replay instead of sampling, one per turn")
    c.add_argument("--noise", action="append", help="ODE noise .npy [1, 4*(P+N), 64], one per turn")
    c.add_argument("--dump", help="write every turn's intermediates to this .npz")
    _add_backend(c)
    c.set_defaults(run=_chat)

    w = sub.add_parser("token2wav", help="vocode given audio codes (no torch)")
    w.add_argument("artifacts")
    w.add_argument("--codes", required=True, help=".npy of audio codes (0..16383)")
    w.add_argument("--noise", help=".npy ODE noise [1, 4*(P+N), 64]")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("-o", "--output", required=True)
    _add_backend(w)
    w.set_defaults(run=_token2wav)

    b = sub.add_parser("bench", help="per-stage latency, runtime vs PyTorch reference, as JSON + SVG (export extra)")
    b.add_argument("--model-dir", required=True)
    b.add_argument("--artifacts", required=True)
    b.add_argument("--seconds", type=float, default=3.0, help="length of the synthetic question")
    b.add_argument("--tokens", type=int, default=40, help="new tokens per turn (forced, identical on both)")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--svg", help="also draw the breakdown here")
    b.set_defaults(run=_bench)

    d = sub.add_parser("demo", help="answer one spoken question with the PyTorch reference (export extra)")
    d.add_argument("--model-dir", required=True, help="release directory (e.g. from make-tiny)")
    d.add_argument("--input", help="question wav (default: a synthetic 3 s utterance)")
    d.add_argument("--output", default="reply.wav", help="where to write the 24 kHz answer")
    d.add_argument("--mode", choices=("speech", "text"), default="speech")
    d.add_argument("--max-new-tokens", type=int, default=60)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(run=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ModuleNotFoundError as e:
        if e.name in ("torch", "transformers", "safetensors", "onnx"):
            print(f"covo-edge {args.command}: needs the export extra ({e.name} is missing): "
                  "pip install 'covo-edge[export]'", file=sys.stderr)
            return 2
        raise
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"covo-edge {args.command}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
