"""`covo-edge chat` and `covo-edge token2wav`: the assistant from the command line. Every input is read
and checked, and every output place checked, before the first turn runs; outputs are written whole."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .assistant import Assistant, Debug, Reply, check_tokens
from .backends import load_backend
from .cli import shorten
from .errors import ContextFullError, InputError, OptionError
from .files import WavWriter, check_output_dir, check_output_file, read_npy, write_atomic, write_npz, write_wav
from .frontend import load_audio
from .manifest import SPEECH_GRAPHS, Manifest
from .token2wav import Token2Wav, check_codes, manifest_voice


def read_noise(path: str, z_dim: int) -> np.ndarray:
    x = read_npy(path, "ODE noise")
    if x.dtype.kind != "f" or x.ndim != 3 or x.shape[0] != 1 or x.shape[2] != z_dim or not np.isfinite(x).all():
        raise InputError(f"{path}: ODE noise must be finite floats [1, frames, {z_dim}], got {x.dtype} {x.shape}")
    return x.astype(np.float32, copy=False)


def chat(artifacts: str, inputs: list[str], output_dir: str, *, mode: str = "speech", greedy: bool | None = None,
         seed: int | None = None, max_new_tokens: int | None = None, force_tokens: list[str] | None = None,
         noise: list[str] | None = None, dump: str | None = None, dump_logits: int | str = 0,
         voice: str | None = None, stream: bool = False, backend: str = "onnxruntime", device: str = "cpu",
         engines: str | None = None) -> int:
    """One turn per input on one conversation; prints a line per turn (the text cut to fit a screen) and its
    timings, writes turn_N.txt (the whole text) and turn_N.wav: whole at the end (exact token2wav), or with
    `stream` chunk by chunk as the reply decodes (streaming token2wav; turn_N.wav.part grows, then is
    renamed). Returns 1 when a speech turn produced no audio codes (no speech to write), else 0."""
    out = check_output_dir(output_dir)
    if dump:
        check_output_file(dump, "--dump")
    for name, given in (("--force-tokens", force_tokens), ("--noise", noise)):
        if given and len(given) != len(inputs):
            raise OptionError(f"{name} takes one file per --input ({len(inputs)}), got {len(given)}")
    questions = [load_audio(p) for p in inputs]  # every turn's input checked before the first turn runs
    manifest = Manifest.load(artifacts)
    forced = [check_tokens(read_npy(p, "forced tokens"), manifest.llm.vocab_size, p) for p in force_tokens or []]
    noises = [read_noise(p, manifest.token2wav.z_dim) for p in noise or []]
    assistant = Assistant.load(artifacts, backend=backend, device=device, mode=mode, voice=voice, engines=engines)
    dumps: dict[str, np.ndarray] = {}
    silent_turns = 0
    for n, (wav, rate) in enumerate(questions):
        debug = Debug(force_tokens=forced[n] if forced else None, noise=noises[n] if noises else None,
                      dump={} if dump else None, step_logits=dump_logits)
        wav_path = out / f"turn_{n}.wav"
        options = dict(greedy=greedy, seed=None if seed is None else seed + n, max_new_tokens=max_new_tokens, debug=debug)
        try:
            if stream and mode == "speech":
                reply = _stream_turn(assistant, wav, rate, wav_path, options)
                print(f"turn {n}: first text after {reply.timings.get('first_text', float('nan')):.2f} s, first audio "
                      f"after {reply.timings.get('first_audio', float('nan')):.2f} s")
            else:
                reply = assistant.reply(wav, rate, **options)
                if reply.audio is not None:
                    write_wav(wav_path, reply.audio, reply.sample_rate)
        except ContextFullError:
            if dump:
                write_npz(dump, dumps)  # the turns that fit
            kept = f"turns 0-{n - 1} were written; " if n else ""
            raise ContextFullError(
                f"turn {n} does not fit: the conversation holds {assistant.context_length} tokens of the "
                f"{assistant.max_context}-token context; {kept}start over with fewer or shorter turns, or export "
                "with a larger --max-context") from None
        print(f"turn {n}: {shorten(reply.text)} ({len(reply.text_ids)} text ids, {len(reply.audio_codes)} audio "
              f"codes, {reply.finish_reason})")
        print("timings_ms " + json.dumps({k: round(v * 1000, 2) for k, v in reply.timings.items() if "." not in k}))
        text = reply.text.encode()
        write_atomic(out / f"turn_{n}.txt", lambda f: f.write(text))
        if reply.audio is None and mode == "speech":
            silent_turns += 1
            stale = f"; the {wav_path} there is from an earlier run" if wav_path.exists() else ""
            print(f"covo-edge chat: turn {n}'s reply holds no audio codes, so there is no speech: {wav_path.name} "
                  f"was not written{stale}", file=sys.stderr)
        if debug.dump is not None:
            dumps.update({f"t{n}_{k}": v for k, v in debug.dump.items()})
    if dump:
        write_npz(dump, dumps)
    return 1 if silent_turns else 0


def _stream_turn(assistant: Assistant, wav: np.ndarray, rate: int, path: Path, options: dict) -> Reply:
    """A turn whose audio is written as it comes; no file is left if the reply has no audio."""
    writer = WavWriter(path, assistant.manifest.token2wav.sample_rate)
    try:
        for chunk in assistant.stream(wav, rate, token2wav="streaming", **options):
            if chunk.audio is not None and chunk.audio.size:
                writer.write(chunk.audio)
    except BaseException:
        writer.abort()
        raise
    if chunk.reply.audio is None:
        writer.abort()
    else:
        writer.close()
    return chunk.reply


def token2wav(artifacts: str, codes: str, output: str, noise: str | None = None, voice: str | None = None,
              seed: int = 0, backend: str = "onnxruntime", device: str = "cpu", engines: str | None = None) -> int:
    """Vocode the audio codes of a .npy file in a voice of the artifacts."""
    check_output_file(output, "-o")
    root = Path(artifacts)
    manifest = Manifest.load(root)
    c = check_codes(read_npy(codes, "audio codes"), manifest.num_audio_codes, codes)
    x0 = read_noise(noise, manifest.token2wav.z_dim) if noise else None
    v = manifest_voice(root, manifest, voice)
    speech_backend = load_backend(backend, root, manifest, device, engines)
    speech_backend.prepare(SPEECH_GRAPHS)
    t2w = Token2Wav(speech_backend, manifest)
    if x0 is None:
        x0 = np.random.default_rng(seed).standard_normal(t2w.noise_shape(len(c), v)).astype(np.float32)
    wav = t2w.vocode(t2w.latents(c, v, x0))
    write_wav(output, wav, manifest.token2wav.sample_rate)
    print(f"wrote {output}: {len(wav)} samples ({len(wav) / manifest.token2wav.sample_rate:.2f} s)")
    return 0
