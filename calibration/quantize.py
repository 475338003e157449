"""`covo-edge quantize`: exported artifacts -> artifacts with quantized graphs, a manifest that says what
was done and where it runs, and the accuracy report against the source.

The graphs a recipe does not touch are copied byte for byte, so the precision of the rest is the export's:
export with `--dtype fp16` for GPU targets (token2wav and the vocoder stay fp16 there), fp32 for the CPU.
The output is staged and renamed at the end: a failed run leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tqdm import tqdm

from covo_edge.runtime.errors import ArtifactsError, OptionError
from covo_edge.runtime.files import staged_directory
from covo_edge.runtime.manifest import FileSpec, Manifest, PrecisionSpec, file_specs, sha256

from .capture import Calibration, capture, utterances
from .recipes import LM_HEADS, Job, recipe
from .report import accuracy_report

REPORT = "precision_report.json"
SKIPPED = ("the accuracy report was not measured (--no-report): run the same quantize with it where the source "
           "artifacts fit in memory on ONNX Runtime CPU (about 1.4x their text graphs' size in fp32, 2.8x in fp16)")
LIBRARIES = ("onnxruntime", "nvidia-modelopt", "onnx")
REPORT_FACTOR = 1.4  # the report's peak over its source's text graphs in fp32 (measured at full width: 1.34-1.40)


def report_memory_gb(artifacts: Path, manifest: Manifest) -> float:
    """What the report needs: it runs the source's text graphs on ONNX Runtime CPU, which computes fp16 graphs in
    fp32 (the embedding table is only mapped and read row by row, so it is not counted)."""
    text = ("audio_encoder", "audio_adapter", "backbone")
    stored = sum((artifacts / f).stat().st_size for g in text for f in manifest.graphs[g].files)
    return REPORT_FACTOR * stored * (2 if manifest.dtype == "float16" else 1) / 1e9


def available_gb() -> float | None:
    """Memory the system can give now (Linux MemAvailable); None where it cannot say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


def _versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def quantize(artifacts: str | Path, out: str | Path, recipe_name: str, lm_head: str = "int8",
             calibration_dir: str | Path | None = None, count: int = 8, decode_steps: int = 16,
             report_steps: int = 40, force: bool = False, quiet: bool = False, measure: bool = True,
             force_report: bool = False) -> dict:
    """Quantize the recipe's graphs of `artifacts` into `out`; returns the accuracy report. Without `measure`
    the report says it was skipped: the quantizing itself streams one matrix at a time, while the report runs
    the source and the result on ONNX Runtime CPU, which needs the source's memory (`report_memory_gb`). Where
    that is more than the machine has available the report is skipped too, saying so, unless `force_report`."""
    artifacts = Path(artifacts)
    chosen = recipe(recipe_name)
    if lm_head not in LM_HEADS:
        raise OptionError(f"--lm-head must be one of {', '.join(LM_HEADS)}, got {lm_head!r}")
    manifest = Manifest.load(artifacts)
    if manifest.precision is not None:
        raise ArtifactsError(f"{artifacts} is already quantized ({manifest.precision.recipe}): quantize the artifacts "
                             "`covo-edge export` wrote")
    inputs, source = utterances(calibration_dir, count + 2)
    held_out = len(inputs) == count + 2  # two more than calibration needs: the report's turns are unseen
    calib_inputs, report_inputs = (inputs[:count], inputs[count:]) if held_out else (inputs, inputs[:2])
    steps = len(calib_inputs) if chosen.calibrated else 0
    # The bar starts once the output place is accepted (a refusal stays one line) and closes however it ends.
    with staged_directory(out, "quantize", force=force) as tmp, tempfile.TemporaryDirectory() as scratch, \
            tqdm(total=steps + len(chosen.graphs) + 1, desc=f"quantize {chosen.name}", unit="step",
                 disable=quiet) as bar:
        calibration = Calibration({}, "none needed (round to nearest)")
        if chosen.calibrated:
            calibration = capture(artifacts, chosen.graphs, calib_inputs, source, decode_steps,
                                  progress=lambda name: (bar.set_postfix_str(name), bar.update()))
        skip = {f for g in chosen.graphs for f in manifest.graphs[g].files}
        for name in manifest.files:
            if name not in skip:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(artifacts / name, tmp / name)
        graphs, precision = dict(manifest.graphs), {}
        for g in chosen.graphs:
            bar.set_postfix_str(g)
            job = Job(g, artifacts / manifest.graphs[g].file, Path(tempfile.mkdtemp(dir=scratch)), tmp, calibration,
                      lm_head, manifest.llm.vocab_size, manifest.dtype)
            precision[g] = chosen.quantize(job)
            graphs[g] = replace(graphs[g], external_data=[f"{g}.onnx.data"])
            bar.update()
        spec = PrecisionSpec(recipe=chosen.name, purpose=chosen.purpose, graphs=precision, targets=chosen.targets,
                             calibration=calibration.description,
                             versions=_versions(), report=REPORT)
        result = replace(manifest, graphs=graphs, files=file_specs(tmp), precision=spec)
        bar.set_postfix_str("accuracy report")
        report = {"recipe": chosen.name, "lm_head": lm_head, "precision": precision,
                  "calibration": calibration.description}
        need, have = report_memory_gb(artifacts, manifest), available_gb()
        short = measure and not force_report and have is not None and need > have
        if short:
            print(f"covo-edge quantize: skipping the accuracy report: it runs the source on ONNX Runtime CPU and needs "
                  f"~{need:.1f} GB, {have:.1f} GB are available (--force-report runs it anyway)", file=sys.stderr)
        if measure and not short:
            report["report_inputs"] = f"{source}; " + (
                "held out from calibration" if held_out or not chosen.calibrated
                else "also used to calibrate (pass more recordings to hold two out)")
            report.update(accuracy_report(artifacts, tmp, result, chosen.graphs, report_inputs, report_steps))
        elif short:
            report["skipped"] = (f"the accuracy report was not measured: it runs the source on ONNX Runtime CPU in fp32 "
                                 f"and needs ~{need:.1f} GB, {have:.1f} GB were available. Run the same quantize where "
                                 "that fits, or from the fp32 export (half the need of an fp16 one's), or with "
                                 "--force-report")
        else:
            report["skipped"] = SKIPPED
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        result.files[REPORT] = FileSpec(bytes=(tmp / REPORT).stat().st_size, sha256=sha256(tmp / REPORT))
        result.save(tmp)
        bar.update()
    return report


def describe(report: dict) -> str:
    """The report in a few lines, for the terminal."""
    lines = [f"recipe {report['recipe']} (LM head {report['lm_head']}):"]
    lines += [f"  {g}: {words}" for g, words in report["precision"].items()]
    if "skipped" in report:
        return "\n".join([*lines, f"  accuracy: {report['skipped']}"])
    tf = report["backbone_teacher_forced"]["both_turns"]
    lines += [f"  {g} output ({v['output']}) vs source over {v['calls']} calls: relative error mean "
              f"{v['rel_error']['mean']:.4f} max {v['rel_error']['max']:.4f}, cosine min {v['cosine']['min']:.4f}"
              for g, v in report["graphs"].items()]
    codes = tf["audio_code_agreement"]
    lines.append(f"  backbone teacher-forced, {tf['steps']} steps over two turns: logit relative error "
                 f"{tf['logit_rel_error']['mean']:.4f}, KL {tf['kl_nats']['mean']:.4f} nats (max {tf['kl_nats']['max']:.4f}), "
                 f"top-1 agreement {tf['top1_agreement']:.3f}, audio-code agreement "
                 f"{'n/a' if codes is None else f'{codes:.3f}'} ({tf['audio_steps']} audio steps)")
    lines.append(f"  token2wav: {report['token2wav']['note']}")
    return "\n".join(lines)

