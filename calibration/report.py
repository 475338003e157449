"""The accuracy report of a quantized artifacts directory against its source, on the same inputs.

Two views. Per graph: each quantized graph and its source run on the feeds the source saw in a
two-turn conversation; the error of the main output. The backbone teacher-forced: both artifacts are fed
the same ids over both turns (the released model's interleave, 5 text ids then 15 audio codes) and every
step's logits are compared: relative error, KL divergence, top-1 agreement, and agreement of the audio
code picked where the next id is an audio code. token2wav and the vocoder are compared only where a
recipe changed them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from covo_edge.runtime.assistant import Assistant, Debug, Model
from covo_edge.runtime.backends import load_backend
from covo_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from covo_edge.runtime.manifest import SPEECH_GRAPHS, Manifest
from covo_edge.runtime.synthetic import interleaved_reply

from .capture import RecordingBackend, Utterance

CAVEAT = (
    "Measured on the model these artifacts hold. On a random-weight model the logits are nearly flat, so a "
    "tiny error flips the top-1 id: top-1 and audio-code agreement are pessimistic there, and relative logit "
    "error and KL are the informative numbers; random weights also lack the outliers AWQ and SmoothQuant exist "
    "for, so they cannot rank recipes for real speech."
)
GATE = (
    "For the real checkpoint, accept a recipe when, teacher-forced over both turns of real questions: top-1 "
    "agreement >= 0.95, audio-code agreement >= 0.90, mean KL <= 0.05 nats; then listen, and compare the "
    "transcript (ASR) and speaker similarity of replies spoken from the quantized codes."
)


def summary(values: list[float] | np.ndarray) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "max": float(v.max()), "min": float(v.min())}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def compare_logits(ref: np.ndarray, got: np.ndarray, next_ids: np.ndarray, code_offset: int) -> dict:
    """Per-step comparison of two [steps, V] logit arrays (row i predicts next_ids[i]); audio steps are those
    whose next id is an audio code."""
    lp, lq = _log_softmax(ref), _log_softmax(got)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    rel = np.linalg.norm(got - ref, axis=-1) / np.maximum(np.linalg.norm(ref, axis=-1), 1e-12)
    audio = next_ids >= code_offset
    code_ref = ref[audio, code_offset:].argmax(-1)
    code_got = got[audio, code_offset:].argmax(-1)
    return {
        "steps": int(len(ref)),
        "logit_rel_error": summary(rel.tolist()),
        "kl_nats": summary(kl.tolist()),
        "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
        "audio_steps": int(audio.sum()),
        "audio_code_agreement": float((code_ref == code_got).mean()) if audio.any() else None,
    }


def _output_error(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    ref, got = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    rel = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12))
    cos = float(ref @ got / max(np.linalg.norm(ref) * np.linalg.norm(got), 1e-12))
    return rel, cos


def _teacher_forced(artifacts: Path, manifest: Manifest, turns: list[Utterance], forced: list[np.ndarray],
                    feeds: dict | None = None, outputs: dict | None = None) -> list[np.ndarray]:
    """Each turn's step logits with the ids forced; with `feeds`, the named graphs' feeds and host outputs
    are recorded on the way."""
    backend = load_backend("onnxruntime", artifacts, manifest, "cpu")
    if feeds is not None:
        backend = RecordingBackend(backend, feeds, outputs)
    assistant = Assistant(Model(artifacts, manifest, backend, "text"), None)
    logits = []
    for u, ids in zip(turns, forced):
        dump: dict[str, np.ndarray] = {}
        assistant.reply(u.wav, u.sample_rate, debug=Debug(force_tokens=ids, dump=dump, step_logits="all"))
        logits.append(dump["step_logits"])
    return logits


def accuracy_report(source: Path, quantized: Path, manifest: Manifest, graphs: tuple[str, ...],
                    turns: list[Utterance], steps: int) -> dict:
    """Compare `quantized` (its manifest given: it is not written yet) with `source` on two turns."""
    reference = Manifest.load(source)
    llm, offset = reference.llm, reference.tokenizer.audio_code_offset
    forced = [interleaved_reply(steps, offset, reference.num_audio_codes, seed) for seed in range(len(turns))]
    feeds: dict[str, list[dict[str, np.ndarray]]] = {g: [] for g in graphs}
    outputs: dict[str, list[dict[str, np.ndarray]]] = {g: [] for g in graphs}
    ref_logits = _teacher_forced(source, reference, turns, forced, feeds, outputs)
    got_logits = _teacher_forced(quantized, manifest, turns, forced)
    per_turn = [compare_logits(r, g, ids, offset) for r, g, ids in zip(ref_logits, got_logits, forced)]
    both = compare_logits(np.concatenate(ref_logits), np.concatenate(got_logits),
                          np.concatenate(forced), offset)

    per_graph = {}
    got_backend = OnnxRuntimeBackend(quantized, manifest)
    for g in graphs:  # the source's outputs were recorded with its feeds: only the quantized graph runs again
        output = reference.graphs[g].outputs[0].name
        errors = [_output_error(ref[output], got_backend.run(g, f, host=[output])[output])
                  for f, ref in zip(feeds[g], outputs[g])]
        per_graph[g] = {"output": output, "calls": len(errors),
                        "rel_error": summary([e[0] for e in errors]),
                        "cosine": summary([e[1] for e in errors])}
    speech_files = [f for g in SPEECH_GRAPHS for f in reference.graphs[g].files]
    changed = [f for f in speech_files if reference.files[f].sha256 != manifest.files[f].sha256]
    return {
        "reference": f"the source artifacts ({reference.dtype}) on the same inputs",
        "inputs": [u.name for u in turns],
        "graphs": per_graph,
        "backbone_teacher_forced": {"forced": "5 text ids, then 15 audio codes, repeated", "both_turns": both,
                                    "per_turn": per_turn, "layers": llm.num_layers},
        "token2wav": {"changed_files": changed,
                      "note": "unchanged (sha256 equal to the source's): the same codes and noise give the same wav"
                      if not changed else "changed: compare the wav (no recipe does this yet)"},
        "caveat": CAVEAT,
        "gate_for_the_real_checkpoint": GATE,
    }
