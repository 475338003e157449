"""Parity at full width: one spoken turn through the PyTorch reference and through the exported artifacts on the
torch-free runtime, each in a process of its own (one process cannot hold both at the real width), compared stage
by stage: resampled audio, log-mel, encoder, adapter, prompt embeddings, prefill logits, every teacher-forced decode
step's logits, token2wav latents (same codes, same noise) and the 24 kHz wav. Prints one JSON object.

    python tools/parity_wide.py RELEASE ARTIFACTS [--steps 40] [--json parity.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

STAGES = ("wav_24k", "mel", "encoder_out", "adapter_out", "inputs_embeds", "prefill_logits", "step_logits",
          "latents", "wav")
TOLERANCE = 1e-4  # max |ours - reference| / max |reference|, the tiny release's test tolerance (fp32)


def reference_side(release: str, question: str, steps: int, out: str) -> None:
    import torch

    from covo_edge.export import audio
    from covo_edge.export.pipeline import ReferenceChat
    from covo_edge.export.release import Release, load_token2wav
    from covo_edge.runtime.frontend import load_audio
    from covo_edge.runtime.synthetic import interleaved_reply

    chat = ReferenceChat(release, mode="text")  # forced ids: the mode's stop id never comes; token2wav below
    wav, rate = load_audio(question)
    forced = interleaved_reply(steps, chat.text_vocab, chat.model.config.num_audio_codes, 0)
    mel, feats, _, _ = chat.encode_audio(wav, rate)
    with torch.inference_mode():
        hidden = chat.model.encoder(mel).last_hidden_state
        wav24 = audio.to_model_rate(torch.from_numpy(wav), rate)
    turn = chat.reply(wav, rate, force_tokens=[int(t) for t in forced], keep_logits=True)
    logits = np.stack(turn.step_logits)
    del chat
    t2w, voice = load_token2wav(Release.open(release)), Release.open(release).voice()
    noise = t2w.noise(len(turn.codes), voice, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        latents = t2w.latents(torch.from_numpy(turn.codes), voice, noise)
        speech = t2w.vocode(latents)
    np.savez(out, forced=forced, noise=noise.numpy(), wav_24k=wav24.numpy(), mel=mel.numpy(), encoder_out=hidden.numpy(),
             adapter_out=feats.numpy(), input_ids=turn.input_ids, inputs_embeds=turn.inputs_embeds,
             prefill_logits=logits[0], step_logits=logits, latents=latents.numpy(), wav=speech.numpy())


def runtime_side(artifacts: str, question: str, reference: str, out: str) -> None:
    from covo_edge.runtime import Assistant, Debug
    from covo_edge.runtime.frontend import load_audio

    ref = np.load(reference)
    assistant = Assistant.load(artifacts)
    wav, rate = load_audio(question)
    dump: dict[str, np.ndarray] = {}
    assistant.reply(wav, rate, debug=Debug(force_tokens=ref["forced"], noise=ref["noise"], dump=dump, step_logits="all"))
    np.savez(out, **dump)


def compare(ref: np.lib.npyio.NpzFile, ours: np.lib.npyio.NpzFile) -> dict:
    out = {"input_ids_equal": bool(np.array_equal(ref["input_ids"], ours["input_ids"]))}
    for name in STAGES:
        a, b = np.asarray(ours[name], np.float64), np.asarray(ref[name], np.float64)
        if name == "adapter_out":
            a = a.reshape(-1, a.shape[-1])[: len(b)]
        if a.shape != b.shape:
            out[name] = {"error": f"shapes differ: ours {a.shape}, reference {b.shape}"}
            continue
        scale = np.abs(b).max()
        rel_max = float(np.abs(a - b).max() / scale) if scale else float(np.abs(a - b).max())
        out[name] = {"shape": list(b.shape), "max_abs_error_over_max_abs": rel_max,
                     "rel_l2": float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)),
                     "within_tolerance": rel_max <= TOLERANCE}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("release")
    p.add_argument("artifacts")
    p.add_argument("--input", help="question audio (default: the release's examples/question.wav)")
    p.add_argument("--steps", type=int, default=40, help="teacher-forced reply ids (5 text, 15 audio, repeated)")
    p.add_argument("--json")
    p.add_argument("--side", choices=("reference", "runtime"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--reference", help=argparse.SUPPRESS)
    args = p.parse_args()
    question = args.input or str(Path(args.release) / "examples" / "question.wav")
    if args.side == "reference":
        reference_side(args.release, question, args.steps, args.out)
        return 0
    if args.side == "runtime":
        runtime_side(args.artifacts, question, args.reference, args.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        ref, ours = f"{tmp}/reference.npz", f"{tmp}/runtime.npz"
        base = [sys.executable, __file__, args.release, args.artifacts, "--input", question, "--steps", str(args.steps)]
        subprocess.run([*base, "--side", "reference", "--out", ref], check=True)
        subprocess.run([*base, "--side", "runtime", "--out", ours, "--reference", ref], check=True)
        report = {"release": args.release, "artifacts": args.artifacts, "tolerance": TOLERANCE,
                  **compare(np.load(ref), np.load(ours))}
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
