"""Random-weight releases of the exact Covo-Audio-Chat architecture and layout, generated offline.

`tiny` runs the whole pipeline in seconds on 2 CPU cores (tests); `small` has the Qwen2.5-0.5B
backbone shape, the size on which speed is measured; `wide` has every component at the released width
(Whisper-large-v3, the 168055-row embedding and LM head, Qwen2.5-7B layers, the full DiT and BigVGAN)
with the backbone cut to 2 layers: the shapes, file sizes and memory of the real model, per layer. All keep the real vocabulary (168055 ids,
text ids below 151671) and token-id layout, bf16 sharded safetensors, a weight-normed token2wav
checkpoint and a voice prompt whose latent prefix is 3 frames longer than 4x its codes (as released).
`tiny` also ships a second voice, `long`, whose prompt is longer than the streaming windows (512 frames),
so that tests run the prompt cut and the history drop that the released 1167-frame voice always takes.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from transformers import Qwen2Config, WhisperConfig

from covo_edge.runtime.errors import OptionError
from covo_edge.runtime.files import staged_directory
from covo_edge.runtime.synthetic import synthetic_utterance

from .config import CovoConfig, DiTConfig, Token2WavConfig, VocoderConfig
from .release import build_covo, weight_norm_keys
from .token2wav import ReferenceToken2Wav
from .tokenizer import SPECIAL_TOKENS, VOCAB_SIZE_TEXT, write_tokenizer

VOCAB = 168055
TEXT_VOCAB = VOCAB_SIZE_TEXT + len(SPECIAL_TOKENS)  # 151671 = len(tokenizer) = first audio code id


@dataclass(frozen=True)
class Size:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    enc_dim: int
    enc_layers: int
    enc_heads: int
    dit: DiTConfig
    vocoder: VocoderConfig
    voice_codes: int
    long_voice_codes: int = 0  # a second voice, `long` (0: none)


SIZES = {
    "tiny": Size(
        hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128,
        enc_dim=64, enc_layers=2, enc_heads=4,
        dit=DiTConfig(token_input_dim=32, hidden_size=64, num_layers=2, num_heads=4, ffn_hidden_size=128, spkr_embed_dim=64),
        vocoder=VocoderConfig(upsample_initial_channel=128),
        voice_codes=10,
        long_voice_codes=160,  # 643 latent frames: past the 512-frame prompt window
    ),
    "small": Size(
        hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864,
        enc_dim=384, enc_layers=4, enc_heads=6,
        dit=DiTConfig(token_input_dim=128, hidden_size=256, num_layers=4, num_heads=4, ffn_hidden_size=1024, spkr_embed_dim=256),
        vocoder=VocoderConfig(upsample_initial_channel=384),
        voice_codes=291,  # the released voice prompt: 291 codes, 1167 latent frames
    ),
}
# The released model's shapes: never written (17 GB of noise); `wide` is it with 2 backbone layers.
RELEASE = Size(
    hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, enc_dim=1280, enc_layers=32, enc_heads=20,
    dit=DiTConfig(), vocoder=VocoderConfig(), voice_codes=291,
)
SIZES["wide"] = replace(RELEASE, layers=2)
SHARD_BYTES = 5 * 10**9  # about save_pretrained's shard size; every release gets at least two shards (an index)


def covo_config(size: Size) -> CovoConfig:
    llm = Qwen2Config(
        vocab_size=VOCAB, hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
        max_position_embeddings=131072, max_window_layers=size.layers, rms_norm_eps=1e-6,
        rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"}, use_sliding_window=False,
        sliding_window=None, tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151643,
        hidden_act="silu", architectures=["Qwen2ForCausalLM"], dtype="bfloat16",
    )
    encoder = WhisperConfig(
        d_model=size.enc_dim, encoder_layers=size.enc_layers, encoder_attention_heads=size.enc_heads,
        encoder_ffn_dim=4 * size.enc_dim, decoder_layers=size.enc_layers, decoder_attention_heads=size.enc_heads,
        decoder_ffn_dim=4 * size.enc_dim, num_mel_bins=128, max_source_positions=1500, vocab_size=51866,
        activation_function="gelu", scale_embedding=False, dtype="float16",
    )
    return CovoConfig(
        llm=llm, encoder=encoder, audio_token_index=TEXT_VOCAB, adapter_downsample=8,
        extra={"architectures": ["CovoAudioForCausalLM"], "dtype": "bfloat16", "whisper_feats_dim": size.enc_dim},
    )


def random_like(name: str, like: torch.Tensor, seed: int) -> torch.Tensor:
    """A tensor seeded by its own name, so adding a module never changes the others' values."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    x = torch.randn(like.shape, generator=g)
    if name.endswith((".alpha", ".beta")):
        return 0.1 * x  # SnakeBeta log-scale parameters
    if like.ndim == 1:
        return 1 + 0.1 * x if "norm" in name else 0.02 * x
    return x * (like.numel() / like.shape[0]) ** -0.5


def _randomize(module: torch.nn.Module, seed: int, prefix: str) -> dict[str, torch.Tensor]:
    """Random values for every parameter; deterministic buffers (filters, rotary tables) are kept."""
    params = {n for n, _ in module.named_parameters()}
    return {
        k: random_like(prefix + k, v, seed) if k in params else v.clone()
        for k, v in module.state_dict().items()
    }


def shard(sizes: dict[str, int], limit: int) -> list[list[str]]:
    """Keys in order, cut by position into ceil(total / limit) shards, at least two (an index)."""
    total = sum(sizes.values())
    n = max(2, -(-total // limit))
    shards: list[list[str]] = [[] for _ in range(n)]
    offset = 0
    for k, size in sizes.items():
        shards[min(n - 1, offset * n // total)].append(k)
        offset += size
    return [s for s in shards if s]


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], make) -> None:
    """A bf16 .safetensors file written tensor by tensor: `make(key)` gives each value as it is written, so
    memory holds one tensor, not the shard (safetensors' own `save_file` takes them all at once)."""
    header, offset = {}, 0
    for k, shape in shapes.items():
        n = 2 * math.prod(shape)
        header[k] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps({"__metadata__": {"format": "pt"}, **header}, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for k, shape in shapes.items():
            value = make(k).to(torch.bfloat16).contiguous()
            if tuple(value.shape) != tuple(shape):
                raise AssertionError(f"{k}: made {tuple(value.shape)}, declared {shape}")
            f.write(value.view(torch.uint8).numpy().data)


def _write_llm(out: Path, config: CovoConfig, seed: int) -> None:
    """The LLM side, built on the meta device (no memory) and written one random tensor at a time."""
    like = build_covo(config, "meta").state_dict()
    sizes = {k: 2 * v.numel() for k, v in like.items()}
    total = sum(sizes.values())
    shards = shard(sizes, SHARD_BYTES)
    weight_map = {}
    for i, keys in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(out / fname, {k: tuple(like[k].shape) for k in keys}, lambda k: random_like(k, like[k], seed))
        weight_map.update({k: fname for k in keys})
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2, ensure_ascii=False))


def _write_token2wav(out: Path, config: Token2WavConfig, size: Size, seed: int) -> None:
    t2w = out / "token2wav"
    t2w.mkdir()
    model = ReferenceToken2Wav(config)
    state = _randomize(model, seed, "token2wav.")
    release_state = {}
    for k, v in state.items():
        if k in set(weight_norm_keys(model)):
            # Quiet residual branches and output conv keep random speech inside tanh's linear range.
            gain = 0.1 if k == "wavegan.conv_post.weight" else 0.3 if ".resblocks." in k else 1.0
            jitter = 0.5 + torch.rand(v.shape[0], generator=torch.Generator().manual_seed(seed))
            g = gain * v.flatten(1).norm(dim=1) * jitter
            release_state[k + "_g"] = g.reshape(-1, *([1] * (v.ndim - 1)))
            release_state[k + "_v"] = v
        else:
            release_state[k] = v
    torch.save({"model": release_state}, t2w / "model.pt")
    (t2w / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    rng = np.random.default_rng(seed)
    z = config.dit.z_dim
    mean_var = np.concatenate([rng.normal(0, 0.5, z), rng.uniform(0.5, 2.0, z)]).astype(np.float32)
    np.save(t2w / "global_mean_var.npy", mean_var[None])
    for name, p in (("prompt", size.voice_codes), ("long", size.long_voice_codes)):
        if not p:
            continue
        voice = t2w / name
        voice.mkdir()
        np.save(voice / "prompt_token.npy", rng.integers(0, config.dit.token_vocab_size, (1, p)).astype(np.int64))
        np.save(voice / "prompt_latent.npy", rng.normal(0, 1, (1, 4 * p + 3, z)).astype(np.float32))
        np.save(voice / "speaker_embed.npy", rng.normal(0, 1, (1, config.dit.spkr_embed_dim)).astype(np.float32))


def make_tiny(out_dir: str | Path, seed: int = 0, size: str = "tiny", force: bool = False, progress=print,
              layers: int | None = None) -> Path:
    """Write a complete random-weight release directory; written to a temp dir, renamed at the end (with
    `force`, over an earlier make-tiny in `out_dir`). `layers` overrides the size's backbone depth (two depths
    of one width give each command's cost per layer)."""
    if size not in SIZES:
        raise OptionError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    spec = SIZES[size] if layers is None else replace(SIZES[size], layers=layers)
    with staged_directory(out_dir, "make-tiny", force=force) as tmp:
        progress(f"[1/3] LLM, encoder, adapter ({size}) ...")
        _write_llm(tmp, covo_config(spec), seed)
        progress("[2/3] token2wav and voice prompt ...")
        _write_token2wav(tmp, Token2WavConfig(dit=spec.dit, vocoder=spec.vocoder), spec, seed)
        progress("[3/3] tokenizer, example question ...")
        write_tokenizer(tmp)
        (tmp / "examples").mkdir()
        sf.write(tmp / "examples" / "question.wav", synthetic_utterance(3.0, 16000, seed), 16000)
    return Path(out_dir)
