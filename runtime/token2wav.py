"""Audio codes -> 24 kHz speech: code features, the midpoint ODE with classifier-free guidance (numpy
loop over the vector-field graph), de-normalisation, vocoder. Numerics as upstream
(DESIGN.md, "Numerics the runtime reproduces")."""

from __future__ import annotations

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
    speaker = manifest.graphs["token2latent_field"].inputs[4].shape[1]
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


class Token2Wav:
    """Vocodes audio codes in a voice: `vocode(latents(codes, voice, noise))`."""

    def __init__(self, backend: Backend, manifest: Manifest):
        self.backend = backend
        cfg = manifest.token2wav
        self.num_codes = manifest.num_audio_codes
        self.steps = cfg.s_steps
        self.cfg_alpha = np.float32(cfg.cfg_alpha)
        self.factor = cfg.upsample_factor
        self.z = cfg.z_dim
        self.mean = np.asarray(cfg.latent_mean, np.float32)
        self.std = np.sqrt(np.asarray(cfg.latent_var, np.float32))
        self.dtype = np.float16 if manifest.dtype == "float16" else np.float32

    def noise_shape(self, num_codes: int, voice: Voice) -> tuple[int, int, int]:
        return (1, self.factor * (len(voice.prompt_token) + num_codes), self.z)

    def latents(self, codes: np.ndarray, voice: Voice, noise: np.ndarray) -> np.ndarray:
        """Codes [N] -> de-normalised latents of the reply [1, T, z] (the voice prompt's prefix dropped)."""
        codes = check_codes(codes, self.num_codes)
        shape = self.noise_shape(len(codes), voice)
        noise = np.asarray(noise)
        if noise.shape != shape or noise.dtype.kind != "f" or not np.isfinite(noise).all():
            raise InputError(f"noise must be finite floats of shape {shape} for {len(codes)} codes in voice "
                             f"{voice.name!r}, got {noise.dtype} {noise.shape}")
        tokens = np.concatenate([voice.prompt_token, codes])[None]
        feats = self.backend.run("token2latent_codes", {"codes": tokens}, host=["token_features"])["token_features"]
        frames, prefix = feats.shape[1], len(voice.prompt_latent)
        cond = np.zeros((1, frames, self.z), self.dtype)
        cond[0, :prefix] = voice.prompt_latent[:frames]
        # The CFG pair is one batch of two; only x and t change between the 18 evaluations.
        pair = {
            "token_features": np.concatenate([np.zeros_like(feats), feats]),
            "latent_cond": np.concatenate([cond, cond]),
            "speaker": np.repeat(voice.speaker_embed[None].astype(self.dtype), 2, axis=0),
        }
        x2 = np.empty((2, frames, self.z), self.dtype)
        t2 = np.empty(2, self.dtype)

        def velocity(z: np.ndarray, t: np.float32) -> np.ndarray:
            x2[0], x2[1] = z[0], z[0]
            t2[:] = t
            v = self.backend.run("token2latent_field", {"x": x2, "t": t2, **pair}, host=["velocity"])["velocity"]
            v = v.astype(np.float32, copy=False)
            return v[1:] + (v[1:] - v[:1]) * self.cfg_alpha

        z = noise.astype(np.float32)
        times = torch_linspace(self.steps)
        for t0, t1 in zip(times[:-1], times[1:]):
            dt = t1 - t0
            half = np.float32(0.5) * dt
            f0 = velocity(z, t0)
            z = z + dt * velocity(z + f0 * half, t0 + half)
        return self.mean + z[:, prefix:] * self.std

    def vocode(self, latents: np.ndarray) -> np.ndarray:
        """[1, T, z] -> 24 kHz float32 wav [240 * T]."""
        if latents.shape[1] == 0:
            return np.zeros(0, np.float32)
        x = np.ascontiguousarray(latents.transpose(0, 2, 1).astype(self.dtype))
        return self.backend.run("vocoder", {"latents": x}, host=["wav"])["wav"].reshape(-1).astype(np.float32)
