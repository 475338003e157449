"""Audio codes -> 24 kHz speech: code features, the midpoint ODE with classifier-free guidance (numpy
loop over the vector-field graph), de-normalisation, vocoder. Numerics as upstream
(DESIGN.md, "Numerics the runtime reproduces")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import Backend
from .errors import ArtifactsError, CodesError, InputError
from .manifest import Manifest

VOICE_FILES = ("prompt_token.npy", "prompt_latent.npy", "speaker_embed.npy")


@dataclass
class Voice:
    """A voice prompt: its codes [P], normalised latents [L, z] and speaker embedding [S]."""

    name: str
    prompt_token: np.ndarray
    prompt_latent: np.ndarray
    speaker_embed: np.ndarray

    @classmethod
    def load(cls, directory: str | Path, name: str | None = None) -> Voice:
        directory = Path(directory)
        missing = [f for f in VOICE_FILES if not (directory / f).is_file()]
        if missing:
            raise ArtifactsError(f"voice dir {directory} lacks {', '.join(missing)}")
        try:
            token, latent, speaker = (np.load(directory / f, allow_pickle=False) for f in VOICE_FILES)
        except (ValueError, OSError) as e:
            raise ArtifactsError(f"voice dir {directory}: unreadable .npy ({e})") from None
        if latent.size == 0:
            raise ArtifactsError(f"voice dir {directory}: prompt_latent.npy is empty")
        return cls(
            name=name or directory.name,
            prompt_token=token.reshape(-1).astype(np.int64),
            prompt_latent=latent.reshape(-1, latent.shape[-1]).astype(np.float32),
            speaker_embed=speaker.reshape(-1).astype(np.float32),
        )


def check_codes(codes: np.ndarray, num_codes: int, where: str = "codes") -> np.ndarray:
    """Audio codes as int64 [N], or CodesError naming what is wrong (and the first offending value)."""
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise CodesError(f"{where} must be integers, got {codes.dtype} (save them as int64)")
    if codes.ndim != 1:
        raise CodesError(f"{where} must be 1-D [N], got shape {codes.shape}")
    if codes.size == 0:
        raise CodesError(f"{where} holds no codes: there is nothing to speak")
    bad = np.flatnonzero((codes < 0) | (codes >= num_codes))
    if bad.size:
        raise CodesError(f"{where}: code {codes[bad[0]]} at index {bad[0]} is outside 0..{num_codes - 1}"
                         f"{f' ({bad.size} codes in all)' if bad.size > 1 else ''}")
    return codes.astype(np.int64, copy=False)


def manifest_voice(artifacts: Path, manifest: Manifest, name: str | None = None) -> Voice:
    """A voice shipped in the artifacts, by name (default: the first one exported), checked against the graphs."""
    if not manifest.voices:
        raise ArtifactsError(f"{artifacts} ships no voice; re-export with --voice")
    name = name or next(iter(manifest.voices))
    if name not in manifest.voices:
        raise ArtifactsError(f"unknown voice {name!r}; available: {', '.join(manifest.voices)}")
    voice = Voice.load(Path(artifacts) / manifest.voices[name], name)
    speaker = manifest.graphs["token2latent_time"].inputs[1].shape[1]
    if voice.prompt_latent.shape[1] != manifest.token2wav.z_dim or voice.speaker_embed.size != speaker:
        raise ArtifactsError(
            f"voice {name!r} has latents of width {voice.prompt_latent.shape[1]} and a speaker embedding of "
            f"{voice.speaker_embed.size}, the graphs take {manifest.token2wav.z_dim} and {speaker}: it belongs to "
            "another model; re-export with this model's voice"
        )
    try:
        check_codes(voice.prompt_token, manifest.num_audio_codes, f"voice {name!r} prompt_token.npy")
    except CodesError as e:
        raise ArtifactsError(str(e)) from None
    return voice


def torch_linspace(steps: int) -> np.ndarray:
    """linspace(0, 1) as torch computes it in float32 (a float32 step, filled from both ends in double
    precision, then rounded), so the ODE visits the very same times as the reference."""
    step = float(np.float32(1.0) / np.float32(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    return np.where(i < steps // 2, i * step, 1.0 - (steps - 1 - i) * step).astype(np.float32)


def midpoint_grid(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed-grid midpoint ODE's interval widths [steps - 1] and the times of its evaluations
    [2 (steps - 1)]: each interval's start and middle, in float32 as the reference computes them."""
    times = torch_linspace(steps)
    dt = times[1:] - times[:-1]
    evaluations = np.stack([times[:-1], times[:-1] + np.float32(0.5) * dt], 1).reshape(-1)
    return dt, evaluations


class NoiseTape:
    """x0 of a turn by frame position: the voice's fixed noise over its prompt frames, then frames drawn
    from the turn's generator in order, as they are needed (or cut from a given array). Drawing in order
    makes the noise of a frame the same whether the reply is vocoded whole or in chunks."""

    def __init__(self, prompt: np.ndarray, rng: np.random.Generator | None = None, given: np.ndarray | None = None):
        self.frames = np.asarray(given[0] if given is not None else prompt, np.float32)
        self.rng = rng

    def take(self, start: int, stop: int) -> np.ndarray:
        """x0 of frames [start, stop) [stop - start, z]."""
        missing = stop - len(self.frames)
        if missing > 0:
            if self.rng is None:
                raise InputError(f"the given noise covers {len(self.frames)} frames, the reply needs {stop}")
            drawn = self.rng.standard_normal((missing, self.frames.shape[1])).astype(np.float32)
            self.frames = np.concatenate([self.frames, drawn])
        return self.frames[start:stop]


@dataclass
class VoiceTables:
    """What a voice fixes for every reply: the field's modulation at each ODE evaluation time [E, M] (the
    time embedding, speaker conditioning and every block's adaLN vectors) and its prompt frames' noise."""

    modulation: np.ndarray
    noise: np.ndarray


class Token2Wav:
    """Audio codes in a voice -> 24 kHz speech: `vocode(latents(codes, voice, noise))` computes the reply
    whole, as upstream does; `streaming.SpeechStream` computes it chunk by chunk."""

    def __init__(self, backend: Backend, manifest: Manifest):
        self.backend = backend
        cfg = manifest.token2wav
        self.spec = cfg
        self.num_codes = manifest.num_audio_codes
        self.cfg_alpha = np.float32(cfg.cfg_alpha)
        self.factor = cfg.upsample_factor
        self.z = cfg.z_dim
        self.mean = np.asarray(cfg.latent_mean, np.float32)
        self.std = np.sqrt(np.asarray(cfg.latent_var, np.float32))
        self.dtype = np.float16 if manifest.dtype == "float16" else np.float32
        self.dt, self.evaluations = midpoint_grid(cfg.s_steps)
        field = {t.name: t for t in manifest.graphs["token2latent_field"].inputs}
        heads, head_dim = field[cfg.past_names[0]].shape[1], field[cfg.past_names[0]].shape[3]
        self.no_cache = {  # the field's cache inputs when the frames are the whole sequence
            "conv_context": np.zeros((2, cfg.conv_context, field["conditioning"].shape[2]), self.dtype),
            "position": np.zeros(1, np.int64),
            **{n: np.zeros((2, heads, 0, head_dim), self.dtype) for n in cfg.past_names},
        }
        self._tables: dict[str, VoiceTables] = {}

    def tables(self, voice: Voice) -> VoiceTables:
        """The voice's modulation table and prompt noise, computed on first use."""
        if voice.name not in self._tables:
            t = self.evaluations.astype(self.dtype)
            speaker = np.repeat(voice.speaker_embed[None].astype(self.dtype), len(t), 0)
            modulation = self.backend.run("token2latent_time", {"t": t, "speaker": speaker}, host=["modulation"])
            noise = np.random.default_rng(0).standard_normal((self.factor * len(voice.prompt_token), self.z))
            self._tables[voice.name] = VoiceTables(modulation["modulation"], noise.astype(np.float32))
        return self._tables[voice.name]

    def noise_shape(self, num_codes: int, voice: Voice) -> tuple[int, int, int]:
        return (1, self.factor * (len(voice.prompt_token) + num_codes), self.z)

    def conditioning(self, voice: Voice, codes: np.ndarray, start: int, stop: int) -> np.ndarray:
        """The guidance pair's conditioning [2, stop - start, H] of frames [start, stop) of the sequence of
        `codes` (the voice prompt's, then the reply's), computed over the codes that reach those frames
        (the upsampler's kernel spans two codes each way) with the voice's latents as the prefix."""
        c0, c1 = max(0, start // self.factor - 2), min(len(codes), -(-stop // self.factor) + 2)
        f0, f1 = self.factor * c0, self.factor * c1
        cond = np.zeros((1, f1 - f0, self.z), self.dtype)
        prefix = voice.prompt_latent[f0 : min(f1, len(voice.prompt_latent))]
        cond[0, : len(prefix)] = prefix
        out = self.backend.run("token2latent_codes", {"codes": codes[None, c0:c1], "latent_cond": cond},
                               host=["conditioning"])
        return out["conditioning"][:, start - f0 : stop - f0]

    def solve(self, modulation: np.ndarray, conditioning: np.ndarray, x0: np.ndarray,
              cache: Callable[[int], dict[str, np.ndarray]] | None = None) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
        """The fixed-grid midpoint ODE from x0 [T, z] (t = 0) to latents (t = 1) of frames with the given
        conditioning [2, T, H]: 2 evaluations per interval, each on the guidance pair as a batch of two,
        v = c + (c - u) * cfg_alpha. `cache(k)` gives what evaluation k attends to besides the new frames
        (KV cache, conv context, position), built as it runs; without it the frames are the whole sequence. Returns the
        latents [T, z] and, with a cache, each evaluation's outputs (the new frames' keys and values)."""
        x2 = np.empty((2, *x0.shape), self.dtype)
        outputs: list[dict[str, np.ndarray]] = []
        host = ["velocity"] if cache is None else ["velocity", "frames", *self.spec.present_names]
        mod2 = np.repeat(modulation[:, None].astype(self.dtype), 2, 1)

        def velocity(z: np.ndarray, k: int) -> np.ndarray:
            x2[0], x2[1] = z, z
            feeds = {"x": x2, "conditioning": conditioning, "modulation": mod2[k],
                     **(self.no_cache if cache is None else cache(k))}
            out = self.backend.run("token2latent_field", feeds, host=host)
            if cache is not None:
                outputs.append(out)
            v = out["velocity"].astype(np.float32, copy=False)
            return v[1] + (v[1] - v[0]) * self.cfg_alpha

        z = x0.astype(np.float32)
        for i, dt in enumerate(self.dt):
            f0 = velocity(z, 2 * i)
            z = z + dt * velocity(z + f0 * (np.float32(0.5) * dt), 2 * i + 1)
        return z, outputs

    def denormalise(self, z: np.ndarray) -> np.ndarray:
        return self.mean + z * self.std

    def latents(self, codes: np.ndarray, voice: Voice, noise: np.ndarray) -> np.ndarray:
        """Codes [N] -> de-normalised latents of the reply [1, T, z], the whole reply at once (upstream's
        computation; the voice prompt's frames are part of the sequence and dropped at the end)."""
        codes = check_codes(codes, self.num_codes)
        shape = self.noise_shape(len(codes), voice)
        noise = np.asarray(noise)
        if noise.shape != shape or noise.dtype.kind != "f" or not np.isfinite(noise).all():
            raise InputError(f"noise must be finite floats of shape {shape} for {len(codes)} codes in voice "
                             f"{voice.name!r}, got {noise.dtype} {noise.shape}")
        tokens = np.concatenate([voice.prompt_token, codes])
        frames = self.factor * len(tokens)
        conditioning = self.conditioning(voice, tokens, 0, frames)
        z, _ = self.solve(self.tables(voice).modulation, conditioning, noise[0])
        return self.denormalise(z[len(voice.prompt_latent) :])[None]

    def vocode(self, latents: np.ndarray) -> np.ndarray:
        """[1, T, z] -> 24 kHz float32 wav [240 * T]."""
        if latents.shape[1] == 0:
            return np.zeros(0, np.float32)
        x = np.ascontiguousarray(latents.transpose(0, 2, 1).astype(self.dtype))
        return self.backend.run("vocoder", {"latents": x}, host=["wav"])["wav"].reshape(-1).astype(np.float32)
