"""Open a release directory laid out like tencent/Covo-Audio-Chat and load it into the reference.

    config.json                    covo_audio config (llm_config, encoder_config)
    *.safetensors                  llm.* encoder.* audio_adapter.* (single or sharded, with or without index)
    tokenizer.json (+ friends)     Qwen2 BPE with the audio specials
    token2wav/model.pt             wavegan.* token2latent.* (weight_g/weight_v), maybe under 'model', maybe 'module.'
    token2wav/config.json          token2wav hyper-parameters
    token2wav/global_mean_var.npy  latent mean and variance
    .../prompt_token.npy           voice prompt dirs (with prompt_latent.npy, speaker_embed.npy)

Every load is checked: a missing or mis-shaped key is an error naming the keys; an unexpected
key is reported by name (upstream loads with strict=False, so real files may carry extras).
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from covo_edge.runtime.token2wav import VOICE_FILES, Voice

from .config import CovoConfig, ReleaseError, Token2WavConfig
from .model import CovoAudio
from .token2wav import ReferenceToken2Wav
from .vocoder import fold_weight_norm

log = logging.getLogger(__name__)

DEFAULT_VOICES = ("default_female", "prompt")


@dataclass
class Release:
    root: Path
    config: CovoConfig
    token2wav_config: Token2WavConfig
    weight_files: list[Path]
    tokenizer_file: Path
    voices: dict[str, Path]

    @classmethod
    def open(cls, root: str | Path) -> Release:
        """Check the layout and read the configs; weights are loaded by `load_covo` / `load_token2wav`."""
        root = Path(root)
        if not root.is_dir():
            raise ReleaseError(f"{root} is not a directory: pass a Covo-Audio-Chat release directory")
        config = CovoConfig.from_file(root / "config.json")
        t2w_config = Token2WavConfig.from_file(root / "token2wav" / "config.json")
        for f in ("token2wav/model.pt", "token2wav/global_mean_var.npy", "tokenizer.json"):
            if not (root / f).is_file():
                raise ReleaseError(f"missing {root / f}: the release directory is incomplete")
        return cls(
            root=root,
            config=config,
            token2wav_config=t2w_config,
            weight_files=_weight_files(root),
            tokenizer_file=root / "tokenizer.json",
            voices=_find_voices(root),
        )

    def voice(self, name_or_dir: str | Path | None = None) -> Voice:
        """A voice by name (a prompt dir's folder name), by path, or the default one."""
        if name_or_dir is not None and Path(name_or_dir).is_dir():
            return Voice.load(Path(name_or_dir))
        if not self.voices:
            raise ReleaseError(f"no voice prompt dir (with {', '.join(VOICE_FILES)}) under {self.root}")
        if name_or_dir is None:
            name_or_dir = next((v for v in DEFAULT_VOICES if v in self.voices), sorted(self.voices)[0])
        if name_or_dir not in self.voices:
            raise ReleaseError(f"unknown voice {name_or_dir!r}; available: {', '.join(sorted(self.voices))}")
        return Voice.load(self.voices[str(name_or_dir)])


def _weight_files(root: Path) -> list[Path]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise ReleaseError(f"{index} is not a safetensors index ({e})") from None
        files = [root / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ReleaseError(f"{index} lists shards that are missing: {', '.join(missing)}")
        return files
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ReleaseError(f"no *.safetensors in {root}: the LLM weights of the release are missing")
    return files


def _find_voices(root: Path) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in sorted(root.glob("**/prompt_token.npy"))}


def _listing(keys: list[str]) -> str:
    return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")


def check_shapes(expected: Mapping[str, Sequence[int]], got: Mapping[str, Sequence[int]], what: str) -> None:
    wrong = sorted(k for k in got if k in expected and tuple(got[k]) != tuple(expected[k]))
    if wrong:
        detail = [f"{k} {tuple(got[k])} != {tuple(expected[k])}" for k in wrong]
        raise ReleaseError(f"{what} has weights of the wrong shape (config mismatch?): {_listing(detail)}")


def check_keys(expected: Mapping[str, Sequence[int]], got: Mapping[str, Sequence[int]], what: str) -> list[str]:
    """Raise on missing or mis-shaped keys (naming them); report and return the unexpected ones."""
    missing = sorted(k for k in expected if k not in got)
    if missing:
        raise ReleaseError(f"{what} lacks {len(missing)} weights: {_listing(missing)}")
    check_shapes(expected, got, what)
    unexpected = sorted(k for k in got if k not in expected)
    if unexpected:
        log.warning("%s carries %d keys the model does not use: %s", what, len(unexpected), _listing(unexpected))
    return unexpected


SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
                      "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor table of a .safetensors file (8-byte length, JSON), checked against the file size."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= size - 8:
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        end = max((v["data_offsets"][1] for v in header.values()), default=0)
        if 8 + n + end > size:
            raise ValueError(f"{size} bytes, the header describes {8 + n + end}")
        for k, v in header.items():
            v["start"] = 8 + n + v["data_offsets"][0]
            v["torch_dtype"] = SAFETENSORS_DTYPES[v["dtype"]]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ReleaseError(f"cannot read {path} ({e}): the file is corrupt or truncated; re-download it") from None
    return header


def _read_tensors(path: Path, header: dict[str, dict], keys: list[str]):
    """Yield (key, tensor) read (not memory-mapped) into one reused scratch buffer: each tensor is
    valid until the next one is read, so the caller copies it out (converting its dtype on the way)."""
    sizes = [header[k]["data_offsets"][1] - header[k]["data_offsets"][0] for k in keys]
    scratch = torch.empty(max(sizes, default=0), dtype=torch.uint8)
    with open(path, "rb") as f:
        for k, n in zip(keys, sizes):
            v = header[k]
            f.seek(v["start"])
            f.readinto(memoryview(scratch[:n].numpy()))
            yield k, scratch[:n].view(v["torch_dtype"]).reshape(v["shape"])


def build_covo(config: CovoConfig, device: str | torch.device = "cpu") -> CovoAudio:
    with torch.device(device):
        return CovoAudio(config)


@dataclass(frozen=True)
class StoredTensor:
    """Where one checkpoint tensor lies in its .safetensors file."""

    path: Path
    start: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


class LazyWeights:
    """Checkpoint tensors left on disk until they are written out. The model holds, for each tensor of more
    than `above` elements, a placeholder of its shape and dtype backed by a single element (a stride-0
    view), which traces like the real one; the exporter swaps it for a read of the file as it writes the
    graph, so an export holds one weight at a time, not the model."""

    def __init__(self, dtype: torch.dtype, above: int):
        self.dtype = dtype
        self.above = above
        self._stored: dict[int, StoredTensor] = {}

    def placeholder(self, stored: StoredTensor) -> torch.Tensor:
        t = torch.empty(1, dtype=self.dtype).expand(stored.shape)
        self._stored[t.data_ptr()] = stored
        return t

    def source(self, t: torch.Tensor) -> StoredTensor | None:
        """The stored tensor a placeholder stands for (None for a real tensor)."""
        if t.numel() <= 1 or any(t.stride()):
            return None
        return self._stored.get(t.data_ptr())

    def read(self, stored: StoredTensor, perm: Sequence[int] | None = None) -> np.ndarray:
        """The tensor in the export's dtype (and axis order): the stored bytes, converted once."""
        raw = torch.empty(stored.nbytes, dtype=torch.uint8)
        with open(stored.path, "rb") as f:
            f.seek(stored.start)
            f.readinto(memoryview(raw.numpy()))
        t = raw.view(stored.dtype).reshape(stored.shape)
        if perm is not None:
            t = t.permute(*perm)
        # one copy converts and lays out at once: the stored bytes and the result, never a third tensor
        return torch.empty(t.shape, dtype=self.dtype).copy_(t).numpy()


def load_covo(release: Release, dtype: torch.dtype = torch.float32, lazy: LazyWeights | None = None) -> CovoAudio:
    """Build on the meta device and assign checkpoint tensors shard by shard: one copy in memory. With
    `lazy`, tensors above its size stay on disk as placeholders (see `LazyWeights`)."""
    model = build_covo(release.config, "meta")
    expected = {k: v.shape for k, v in model.state_dict().items()}
    what = f"weights in {release.root}"
    loaded: dict[str, torch.Size] = {}
    for f in release.weight_files:
        header = _safetensors_header(f)
        shapes = {k: torch.Size(v["shape"]) for k, v in header.items()}
        check_shapes(expected, shapes, what)
        loaded.update(shapes)
        wanted = [k for k in shapes if k in expected]
        if lazy is not None:
            for k in [k for k in wanted if shapes[k].numel() > lazy.above]:
                v = header[k]
                stored = StoredTensor(f, v["start"], v["data_offsets"][1] - v["data_offsets"][0], v["torch_dtype"],
                                      tuple(v["shape"]))
                model.load_state_dict({k: lazy.placeholder(stored)}, strict=False, assign=True)
            wanted = [k for k in wanted if shapes[k].numel() <= lazy.above]
        for k, tensor in _read_tensors(f, header, wanted):
            # one tensor at a time, read (not mapped): peak memory = the model + one tensor
            model.load_state_dict({k: tensor.to(dtype, copy=True)}, strict=False, assign=True)
    check_keys(expected, loaded, what)
    # Non-persistent buffers (rotary tables) are not in the checkpoint: rebuild them on the CPU.
    rotary = model.llm.model.rotary_emb
    model.llm.model.rotary_emb = type(rotary)(config=release.config.llm)
    return model.eval().requires_grad_(False)


def token2wav_state(raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Release token2wav keys -> module keys: unwrap 'model', strip 'module.', fold weight norm."""
    if "model" in raw and isinstance(raw["model"], Mapping):
        raw = raw["model"]
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in raw.items()}
    out = {}
    for k, v in state.items():
        if k.endswith(".weight_v"):
            base = k[: -len("_v")]
            g = state.get(base + "_g")
            if g is None:
                raise ReleaseError(f"token2wav/model.pt has {k} without its {base}_g")
            out[base] = fold_weight_norm(g.float(), v.float())
        elif not k.endswith(".weight_g"):
            out[k] = v
    return out


def release_key_shapes(module_shapes: Mapping[str, torch.Size], weight_norm_keys: Iterable[str]) -> dict[str, tuple]:
    """Module keys -> the keys the release stores: each weight-normed `weight` becomes weight_g + weight_v."""
    out: dict[str, tuple] = {}
    norm = set(weight_norm_keys)
    for k, shape in module_shapes.items():
        if k in norm:
            out[k + "_v"] = tuple(shape)
            out[k + "_g"] = (shape[0],) + (1,) * (len(shape) - 1)
        else:
            out[k] = tuple(shape)
    return out


def weight_norm_keys(model: ReferenceToken2Wav) -> list[str]:
    """Vocoder convs that the release stores weight-normed (every conv of BigVGAN)."""
    return [
        f"wavegan.{name}.weight"
        for name, m in model.wavegan.named_modules()
        if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))
    ]


def load_token2wav(release: Release) -> ReferenceToken2Wav:
    path = release.root / "token2wav" / "model.pt"
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise ReleaseError(f"cannot read {path} ({str(e).splitlines()[0]}): corrupt or not a state dict") from None
    if not isinstance(raw, Mapping):
        raise ReleaseError(f"{path} holds a {type(raw).__name__}, expected a state dict")
    state = token2wav_state(raw)
    model = ReferenceToken2Wav(release.token2wav_config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_keys(expected, {k: v.shape for k, v in state.items()}, str(path))
    model.load_state_dict({k: state[k].float() for k in expected})
    try:
        stats = np.load(release.root / "token2wav" / "global_mean_var.npy", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ReleaseError(f"cannot read token2wav/global_mean_var.npy ({e})") from None
    model.set_latent_stats(stats)
    return model.eval().requires_grad_(False)
