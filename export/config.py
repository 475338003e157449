"""Configs of a Covo-Audio-Chat release: the LLM side (config.json) and token2wav (token2wav/config.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import Qwen2Config, WhisperConfig

from covo_edge.runtime.errors import CovoEdgeError


class ReleaseError(CovoEdgeError, ValueError):
    """A release directory that cannot be used; the message names the problem and the fix."""


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ReleaseError(f"missing {path}: point --model-dir at a complete Covo-Audio-Chat release directory")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReleaseError(f"{path} is not valid JSON ({e}); re-download or regenerate it") from None


@dataclass
class CovoConfig:
    """config.json (`model_type: covo_audio`): Qwen2 backbone, Whisper encoder, adapter.

    `audio_token_index` (151671) is where audio codes start in the LLM vocabulary, i.e.
    len(tokenizer); the <|cAUDIO|> placeholder id comes from the tokenizer, not from here.
    """

    llm: Qwen2Config
    encoder: WhisperConfig
    audio_token_index: int = 151671
    adapter_downsample: int = 8
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CovoConfig:
        if d.get("model_type") != "covo_audio":
            raise ReleaseError(f"config.json has model_type {d.get('model_type')!r}, expected 'covo_audio'")
        for key in ("llm_config", "encoder_config"):
            if not isinstance(d.get(key), dict):
                raise ReleaseError(f"config.json lacks the nested '{key}' of a Covo-Audio-Chat release")
        # transformers 5 reads both `rope_theta` and `rope_parameters`, and `sliding_window: null`.
        llm = Qwen2Config.from_dict(d["llm_config"])
        encoder = WhisperConfig.from_dict(d["encoder_config"])
        known = {"llm_config", "encoder_config", "audio_token_index", "adapter_downsample"}
        cfg = cls(
            llm=llm,
            encoder=encoder,
            audio_token_index=int(d.get("audio_token_index", 151671)),
            adapter_downsample=int(d.get("adapter_downsample", 8)),
            extra={k: v for k, v in d.items() if k not in known},
        )
        if cfg.audio_token_index >= llm.vocab_size:
            raise ReleaseError(
                f"config.json: audio_token_index {cfg.audio_token_index} >= llm vocab_size {llm.vocab_size}"
            )
        return cfg

    @classmethod
    def from_file(cls, path: Path) -> CovoConfig:
        return cls.from_dict(read_json(path))

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.extra)
        d.update(
            model_type="covo_audio",
            llm_config=self.llm.to_dict(),
            encoder_config=self.encoder.to_dict(),
            audio_token_index=self.audio_token_index,
            adapter_downsample=self.adapter_downsample,
        )
        return d

    @property
    def num_audio_codes(self) -> int:
        return self.llm.vocab_size - self.audio_token_index

    @property
    def head_dim(self) -> int:
        """The attention head width: the config's own `head_dim` where it has one (the one place it is computed)."""
        return getattr(self.llm, "head_dim", None) or self.llm.hidden_size // self.llm.num_attention_heads


@dataclass(frozen=True)
class DiTConfig:
    """Flow-matching token2latent: code embedding, 4x upsampling, DiT vector field."""

    token_vocab_size: int = 16384
    token_input_dim: int = 512
    hidden_size: int = 1024
    num_layers: int = 12
    num_heads: int = 16
    ffn_hidden_size: int = 4096
    z_dim: int = 64
    spkr_embed_dim: int = 1024
    upsample_factor: int = 4
    rotary_theta: float = 50000.0  # fixed upstream, not in config.json
    conv_kernel: int = 31  # fixed upstream
    conv_groups: int = 16  # fixed upstream


@dataclass(frozen=True)
class VocoderConfig:
    """BigVGAN (causal, SnakeBeta, AMP blocks of type '1'): latents [64, T] -> 24 kHz wav."""

    latent_dim: int = 64
    upsample_initial_channel: int = 1536
    upsample_rates: tuple[int, ...] = (5, 3, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (10, 6, 4, 4, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    snake_logscale: bool = True

    @property
    def hop(self) -> int:
        """Samples per latent frame (240 for the release)."""
        n = 1
        for r in self.upsample_rates:
            n *= r
        return n


@dataclass(frozen=True)
class Token2WavConfig:
    dit: DiTConfig = DiTConfig()
    vocoder: VocoderConfig = VocoderConfig()
    sample_rate: int = 24000
    s_steps: int = 10
    cfg_alpha: float = 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Token2WavConfig:
        try:
            model, t2l, voc = d["model"], d["model"]["token2latent"], d["model"]["wavegan"]
            tr = t2l["transformer"]
            if voc.get("resblock", "1") != "1" or voc.get("activation", "snakebeta") != "snakebeta":
                raise ReleaseError(
                    "token2wav/config.json: only BigVGAN resblock '1' with snakebeta (the released vocoder) is supported"
                )
            if not voc.get("causal", True):
                raise ReleaseError("token2wav/config.json: only the causal BigVGAN of the release is supported")
            dit = DiTConfig(
                token_vocab_size=int(t2l["token_vocab_size"]),
                token_input_dim=int(t2l.get("token_input_dim", tr["hidden_size"])),
                hidden_size=int(tr["hidden_size"]),
                num_layers=int(tr["num_layers"]),
                num_heads=int(tr["num_heads"]),
                ffn_hidden_size=int(tr["ffn_hidden_size"]),
                z_dim=int(t2l["z_dim"]),
                spkr_embed_dim=int(t2l.get("spkr_embed_dim", 512)),
                upsample_factor=int(t2l["upsample_factor"]),
            )
            vocoder = VocoderConfig(
                latent_dim=int(voc["latent_dim"]),
                upsample_initial_channel=int(voc["upsample_initial_channel"]),
                upsample_rates=tuple(voc["upsample_rates"]),
                upsample_kernel_sizes=tuple(voc["upsample_kernel_sizes"]),
                resblock_kernel_sizes=tuple(voc["resblock_kernel_sizes"]),
                resblock_dilation_sizes=tuple(tuple(x) for x in voc["resblock_dilation_sizes"]),
                snake_logscale=bool(voc.get("snake_logscale", True)),
            )
            inference = d.get("inference", {})
            return cls(
                dit=dit,
                vocoder=vocoder,
                sample_rate=int(d.get("data", {}).get("audio", {}).get("sample_rate", model.get("wav_input_sr", 24000))),
                s_steps=int(inference.get("s_steps", 10)),
                cfg_alpha=float(inference.get("cfg_alpha", 1.0)),
            )
        except (KeyError, TypeError) as e:
            raise ReleaseError(f"token2wav/config.json lacks or mistypes field {e}: is it the release's token2wav config?") from None

    @classmethod
    def from_file(cls, path: Path) -> Token2WavConfig:
        return cls.from_dict(read_json(path))

    def to_dict(self) -> dict[str, Any]:
        """The upstream token2wav/config.json layout (only the fields inference reads, plus their neighbours)."""
        dit, voc = self.dit, self.vocoder
        return {
            "data": {"audio": {"sample_rate": self.sample_rate, "hop_size": 480}},
            "model": {
                "type": "Token2WavDecoder",
                "token2latent": {
                    "upsample_factor": dit.upsample_factor,
                    "token_vocab_size": dit.token_vocab_size,
                    "token_input_dim": dit.token_input_dim,
                    "z_dim": dit.z_dim,
                    "spkr_embed_dim": dit.spkr_embed_dim,
                    "transformer": {
                        "num_layers": dit.num_layers,
                        "hidden_size": dit.hidden_size,
                        "ffn_hidden_size": dit.ffn_hidden_size,
                        "num_heads": dit.num_heads,
                        "modulation": True,
                        "rotary_bias": True,
                        "alibi_bias": False,
                        "qk_norm": False,
                    },
                },
                "wav_input_sr": self.sample_rate,
                "wavegan": {
                    "type": "BigVGANFlowVAE",
                    "resblock": "1",
                    "activation": "snakebeta",
                    "causal": True,
                    **{k: v for k, v in asdict(voc).items()},
                },
            },
            "inference": {"s_steps": self.s_steps, "cfg_alpha": self.cfg_alpha},
        }
