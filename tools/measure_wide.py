"""What the real model needs, measured: every command of the user's path (make-tiny, export fp16 and fp32,
quantize int4-rtn and int8-weights, check, chat, TensorRT-RTX engine builds, bench) run on wide releases (every part at the released width)
of two backbone depths, each in a process of its own with its peak resident memory (wait4), wall time and the
size of what it wrote. Two depths give each number's cost per layer and fixed part; evaluated at the 7B's 28
layers they are the README's "What the 7B needs". Prints one JSON object (progress goes to stderr).

    python tools/measure_wide.py /tmp/wide-runs --layers 2 --full   # the user's path, bench and parity
    python tools/measure_wide.py /tmp/wide-runs --layers 4 --clean  # a second depth: the per-layer costs

Results accumulate in WORK/measurements.json (a rerun measures only the steps not measured yet); the model is
fitted once two depths are in it. `--clean` deletes a depth's releases and artifacts when its steps are done.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RELEASE_LAYERS = 28
GB = 1e9


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(argv: list[str], log: Path) -> dict:
    """Run one command; its own peak RSS (not the largest of all children so far), wall time, exit status."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    return {"peak_rss_gb": usage.ru_maxrss * 1024 / GB, "wall_s": time.perf_counter() - t0,
            "exit": os.waitstatus_to_exitcode(status)}


def steps(work: Path, layers: int, full: bool) -> list[tuple[str, list[str], Path]]:
    """(name, command, what it writes) in order; `full` adds the bench and the parity check."""
    d = work / f"L{layers}"
    rel, a16, a32 = d / "rel", d / "art16", d / "art32"
    q4, q8, q4h = d / "int4-rtn", d / "int8-weights", d / "int4-rtn-from-fp16"
    q4n = d / "int4-rtn-from-fp16-no-report"
    question = rel / "examples" / "question.wav"
    edge = ["covo-edge"]
    chat = ["--input", str(question), "--max-new-tokens", "60", "--greedy"]
    out = [
        ("make-tiny", [*edge, "make-tiny", str(rel), "--size", "wide", "--layers", str(layers)], rel),
        ("export fp16", [*edge, "export", str(rel), "-o", str(a16), "--dtype", "fp16"], a16),
        ("export fp32", [*edge, "export", str(rel), "-o", str(a32), "--dtype", "fp32"], a32),
        ("quantize int4-rtn (fp32)", [*edge, "quantize", str(a32), "-o", str(q4), "--recipe", "int4-rtn"], q4),
        ("quantize int8-weights (fp32)", [*edge, "quantize", str(a32), "-o", str(q8), "--recipe", "int8-weights"], q8),
        ("quantize int4-rtn (fp16)", [*edge, "quantize", str(a16), "-o", str(q4h), "--recipe", "int4-rtn"], q4h),
        ("quantize int4-rtn (fp16, no report)",
         [*edge, "quantize", str(a16), "-o", str(q4n), "--recipe", "int4-rtn", "--no-report"], q4n),
        *[(f"check {a.name}", [*edge, "check", str(a)], a / "manifest.json") for a in (a16, a32, q4, q8, q4h, q4n)],
        *[(f"chat {a.name}", [*edge, "chat", str(a), *chat, "--output-dir", str(d / f"chat-{a.name}")],
           d / f"chat-{a.name}") for a in (a32, q4, q4h, q4n)],
    ]
    if full:
        out += [
            ("parity fp32", [sys.executable, str(Path(__file__).with_name("parity_wide.py")), str(rel), str(a32),
                             "--json", str(d / "parity.json")], d / "parity.json"),
            ("bench", [*edge, "bench", "--model-dir", str(rel), "--artifacts", str(a32), "--compare", str(q4),
                       "--new-tokens", "40", "--json", str(d / "bench.json"),
                       "--chart", str(d / "bench.png")], d / "bench.json"),
        ]
    return out + [(f"build rtx {a.name}", [*edge, "build", str(a), "-o", str(d / f"rtx-{a.name}"), "--target", "rtx",
                                           "--quiet"], d / f"rtx-{a.name}") for a in (a16, q4h)]


def per_layer_model(results: dict[str, dict]) -> dict:
    """For each step measured at the two smallest depths: cost per layer, fixed part, the value at 28 layers."""
    a, b = sorted(int(k) for k in results)[:2]
    model = {}
    for name, at_a in results[str(a)].items():
        at_b = results[str(b)].get(name)
        if at_b is None:
            continue
        model[name] = {}
        for key in ("peak_rss_gb", "wall_s", "output_gb"):
            slope = (at_b[key] - at_a[key]) / (b - a)
            fixed = at_a[key] - a * slope
            model[name][key] = {"per_layer": slope, "fixed": fixed, "at_28_layers": fixed + RELEASE_LAYERS * slope}
    return model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path)
    p.add_argument("--layers", type=int, nargs="+", default=[2, 4], help="backbone depths to measure")
    p.add_argument("--full", action="store_true", help="also the bench and the parity check against PyTorch")
    p.add_argument("--clean", action="store_true", help="delete each depth's releases and artifacts when done")
    p.add_argument("--only", nargs="+", metavar="STEP", help="measure only these steps (names as printed)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    store = args.work / "measurements.json"
    results: dict[str, dict] = json.loads(store.read_text()) if store.is_file() else {}
    for layers in args.layers:
        done = results.setdefault(str(layers), {})
        (args.work / f"L{layers}").mkdir(exist_ok=True)
        todo = [s for s in steps(args.work, layers, args.full) if not args.only or s[0] in args.only]
        for name, argv, output in todo:
            if name in done:
                continue
            print(f"[{layers} layers] {name} ...", file=sys.stderr, flush=True)
            log = args.work / f"L{layers}" / (name.replace(" ", "_").replace("(", "").replace(")", "") + ".log")
            m = measure(argv, log)
            if m["exit"] != 0:
                print(f"  failed (exit {m['exit']}): see {log}", file=sys.stderr)
                return 1
            done[name] = {**m, "output_gb": size_of(output) / GB}
            print(f"  {done[name]['peak_rss_gb']:.2f} GB peak, {done[name]['wall_s']:.0f} s, "
                  f"wrote {done[name]['output_gb']:.2f} GB", file=sys.stderr, flush=True)
            store.write_text(json.dumps(results, indent=2))
        if args.clean:
            for _, _, output in todo:
                if output.is_dir():
                    shutil.rmtree(output)
    report = {"measured": results}
    if len(results) > 1:
        report["model"] = per_layer_model(results)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
