"""`covo-edge chat` and `covo-edge token2wav`: the assistant from the command line, writing wavs and,
with --dump, every turn's named intermediates so a device can be diffed against the reference."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from .assistant import Assistant
from .frontend import load_audio
from .manifest import Manifest
from .backends import load_backend
from .token2wav import Token2Wav, manifest_voice


def _atomic(path: Path, write) -> None:
    """Write through a temp file in the same folder and rename: never a half-written output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an output is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_wav(path: str | Path, wav: np.ndarray, sample_rate: int) -> None:
    _atomic(Path(path), lambda tmp: sf.write(tmp, wav, sample_rate, subtype="FLOAT", format="WAV"))


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _atomic(Path(path), save)


def chat(artifacts: str, inputs: list[str], output_dir: str, *, mode: str = "speech", greedy: bool | None = None,
         seed: int | None = None, max_new_tokens: int | None = None, force_tokens: list[str] | None = None,
         noise: list[str] | None = None, dump: str | None = None, voice: str | None = None,
         backend: str = "onnxruntime", device: str = "cpu") -> None:
    assistant = Assistant.load(artifacts, backend=backend, device=device, mode=mode, voice=voice)
    for name, given in (("--force-tokens", force_tokens), ("--noise", noise)):
        if given and len(given) != len(inputs):
            raise ValueError(f"{name} takes one file per --input ({len(inputs)}), got {len(given)}")
    dumps: dict[str, np.ndarray] = {}
    out = Path(output_dir)
    for n, path in enumerate(inputs):
        wav, sr = load_audio(path)
        turn_dump = {} if dump else None
        reply = assistant.reply(
            wav, sr, greedy=greedy, seed=None if seed is None else seed + n, max_new_tokens=max_new_tokens,
            force_tokens=np.load(force_tokens[n]) if force_tokens else None,
            noise=np.load(noise[n]) if noise else None, dump=turn_dump,
        )
        print(f"turn {n}: {reply.text!r} ({len(reply.text_ids)} text ids, {len(reply.audio_codes)} audio codes, "
              f"{reply.finish_reason})")
        if reply.audio is not None:
            write_wav(out / f"turn_{n}.wav", reply.audio, reply.sample_rate)
        print("timings_ms " + json.dumps({k: round(v * 1000, 2) for k, v in reply.timings.items()}))
        if turn_dump is not None:
            dumps.update({f"t{n}_{k}": np.asarray(v) for k, v in turn_dump.items()})
    if dump:
        write_npz(dump, dumps)


def token2wav(artifacts: str, codes: str, output: str, noise: str | None = None, voice: str | None = None,
              seed: int = 0, backend: str = "onnxruntime", device: str = "cpu") -> None:
    root = Path(artifacts)
    manifest = Manifest.load(root)
    v = manifest_voice(root, manifest, voice)
    t2w = Token2Wav(load_backend(backend, root, manifest, device), manifest)
    c = np.load(codes).reshape(-1).astype(np.int64)
    x0 = np.load(noise) if noise else np.random.default_rng(seed).standard_normal(t2w.noise_shape(len(c), v)).astype(np.float32)
    wav = t2w.vocode(t2w.latents(c, v, x0))
    write_wav(output, wav, int(manifest.token2wav["sample_rate"]))
    print(f"wrote {output}: {len(wav)} samples")
