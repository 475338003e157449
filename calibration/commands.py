"""The calibration side's `covo-edge quantize`, registered through the `covo_edge.commands` entry point;
registering imports nothing heavy."""

from __future__ import annotations

import argparse

from covo_edge.runtime.cli import int_at_least


def _quantize(args: argparse.Namespace) -> int:
    from .recipes import RECIPES

    if args.list:
        for r in RECIPES.values():
            print(f"{r.name}\t{r.purpose}")
        return 0
    if not args.artifacts or not args.output:
        args.parser.error("ART and -o/--output are required (or --list)")
    from .quantize import describe, quantize

    report = quantize(args.artifacts, args.output, args.recipe, lm_head=args.lm_head,
                      calibration_dir=args.calibration_dir, count=args.utterances, decode_steps=args.decode_steps,
                      report_steps=args.report_steps, force=args.force, measure=not args.no_report,
                      force_report=args.force_report)
    print(describe(report))
    print(f"wrote {args.output} (report: {args.output}/precision_report.json)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("quantize", help="exported artifacts -> quantized artifacts + accuracy report (calibration extra)")
    q.add_argument("artifacts", nargs="?", help="artifacts directory from `covo-edge export`")
    q.add_argument("-o", "--output", help="artifacts directory to create")
    q.add_argument("--recipe", default="int4-awq", help="see --list (default: int4-awq)")
    q.add_argument("--list", action="store_true", help="print the recipes, one per line: name, then what it is for")
    q.add_argument("--lm-head", choices=("int8", "int4", "keep"), default="int8",
                   help="the LM head's own precision (keep: the export's dtype)")
    q.add_argument("--calibration-dir", help="folder of recordings (default: built-in synthetic utterances)")
    q.add_argument("--utterances", type=int_at_least(2), default=8, help="calibration utterances to use")
    q.add_argument("--decode-steps", type=int_at_least(1), default=16,
                   help="new tokens recorded per turn (calibrated recipes): each recorded step holds its feeds, "
                        "the KV cache of its history included: 2 x layers x KV heads x head dim x 4 bytes per "
                        "token of history, 115 kB for the 7B (35 MB a step at 300 tokens)")
    q.add_argument("--report-steps", type=int_at_least(20), default=40,
                   help="teacher-forced steps per turn in the accuracy report")
    q.add_argument("--no-report", action="store_true",
                   help="skip the accuracy report: quantizing streams one matrix at a time, the report runs the "
                        "source model in fp32 on the CPU (for the 7B about 44 GB, from fp32 or fp16 artifacts); it is "
                        "skipped, saying so, where the machine has less memory available")
    q.add_argument("--force-report", action="store_true",
                   help="run the accuracy report even where it looks to need more memory than is available")
    q.add_argument("--force", action="store_true", help="replace an earlier quantize in OUTPUT")
    q.set_defaults(run=_quantize, extra="calibration", parser=q)
