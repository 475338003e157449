"""manifest.json of an artifacts directory: the one contract between export, engines and runtime.

It names every graph's inputs and outputs (dtypes, dims), every file with its size and sha256, the
tokenizer's ids, the prompt, the model's dimensions, the sampling defaults, token2wav's settings and the
voices. The runtime hard-codes no shape or id it can read here, and `Manifest.load` refuses artifacts
that break the contract (DESIGN.md, "The artifacts contract").
"""

from __future__ import annotations

import ast
import hashlib
import json
import operator
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from .errors import ArtifactsError
from .files import STAMP
from .frontend import MEL_FRAMES, N_MELS
from .prompt import AUDIO_SLOT
from .sampling import Sampling

SCHEMA_VERSION = 3
MANIFEST = "manifest.json"

# Graph names and their fixed inputs and outputs: the exporter names the graphs with these, the runtime
# feeds them. The backbone and the token2latent field also take and return a KV cache, two tensors per
# layer (`kv_names`): the LLM's conversation, the DiT's voice prompt and earlier chunks.
GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "audio_encoder": (("mel",), ("hidden",)),
    "audio_adapter": (("hidden",), ("features",)),
    "embed_tokens": (("input_ids",), ("inputs_embeds",)),
    "backbone": (("inputs_embeds", "attention_mask", "position_ids"), ("logits",)),
    "token2latent_codes": (("codes", "latent_cond"), ("conditioning",)),
    "token2latent_time": (("t", "speaker"), ("modulation",)),
    "token2latent_field": (("x", "conditioning", "modulation", "conv_context", "position"), ("velocity", "frames")),
    "vocoder": (("latents",), ("wav",)),
}
SPEECH_GRAPHS = ("token2latent_codes", "token2latent_time", "token2latent_field", "vocoder")  # not in text mode


def kv_names(prefix: str, num_layers: int) -> list[str]:
    """The KV cache's tensor names, layer by layer: `past_key_values` (inputs) or `present` (outputs)."""
    return [f"{prefix}.{i}.{part}" for i in range(num_layers) for part in ("key", "value")]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_specs(directory: Path) -> dict[str, FileSpec]:
    """Size and sha256 of every file under `directory` but manifest.json and the folder's stamp."""
    paths = sorted(p for p in Path(directory).rglob("*") if p.is_file() and p.name not in (MANIFEST, STAMP))
    return {p.relative_to(directory).as_posix(): FileSpec(bytes=p.stat().st_size, sha256=sha256(p)) for p in paths}


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def dim_value(dim: int | str, dims: dict[str, int]) -> int:
    """A dim of a graph's shape given its named dims: 7, 'frames' or '240*frames', 'past_sequence + sequence'."""
    if isinstance(dim, int):
        return dim

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in dims:
            return dims[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ArtifactsError(f"manifest.json: cannot evaluate the dim {dim!r}; re-run `covo-edge export`")

    return value(ast.parse(dim, mode="eval").body)


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy name: float32, float16, int64
    shape: list[int | str]  # str: a dynamic dim's name or an expression of names


@dataclass
class GraphSpec:
    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    profiles: list[dict[str, list[int]]]  # engine optimization profiles: dynamic dim -> [min, opt, max]
    external_data: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return [self.file, *self.external_data]

    def profile_shapes(self, index: int) -> dict[str, tuple[list[int], list[int], list[int]]]:
        """Input name -> (min, opt, max) shapes of one profile, its dims filled into the inputs' shapes."""
        dims = self.profiles[index]
        return {t.name: tuple([dim_value(d, {k: v[i] for k, v in dims.items()}) for d in t.shape] for i in range(3))
                for t in self.inputs}

    def check_io(self, path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
        """Refuse a graph file whose real inputs or outputs differ from this spec in name, order, dtype,
        rank or a fixed dim: it was swapped, replaced by another graph, or left from another export."""
        why = _io_mismatch(self.inputs, inputs, "inputs") or _io_mismatch(self.outputs, outputs, "outputs")
        if why:
            raise ArtifactsError(
                f"{path} does not match its manifest entry ({why}): the file was swapped, replaced or left from "
                "another export; restore it or re-run `covo-edge export`"
            )


def _io_mismatch(expected: list[TensorSpec], actual: list[TensorSpec], side: str) -> str | None:
    names, want = [t.name for t in actual], [t.name for t in expected]
    if names != want:
        return f"its {side} are [{_listing(names)}], the manifest lists [{_listing(want)}]"
    for e, a in zip(expected, actual):
        if a.dtype != e.dtype:
            return f"{e.name} is {a.dtype}, the manifest says {e.dtype}"
        if len(a.shape) != len(e.shape):
            return f"{e.name} has rank {len(a.shape)}, the manifest says {len(e.shape)}"
        for axis, (x, y) in enumerate(zip(a.shape, e.shape)):
            if isinstance(x, int) and isinstance(y, int) and x != y:
                return f"{e.name} has {x} on axis {axis}, the manifest says {y}"
    return None


def _listing(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")


@dataclass
class FileSpec:
    bytes: int
    sha256: str


@dataclass
class TokenizerSpec:
    files: list[str]
    ids: dict[str, int]  # the special tokens the runtime uses
    audio_code_offset: int  # = len(tokenizer): ids below are text, id - offset is an audio code


@dataclass
class PromptSpec:
    system: str
    first_turn: str  # templates with {system} and {audio}
    later_turn: str

    def render(self, n_slots: int, first_turn: bool) -> str:
        template = self.first_turn if first_turn else self.later_turn
        return template.replace("{system}", self.system).replace("{audio}", AUDIO_SLOT * n_slots)


class _KVCacheNames:
    """The names of a graph's KV cache tensors, two per layer (`num_layers`)."""

    num_layers: int

    @property
    def past_names(self) -> list[str]:
        return kv_names("past_key_values", self.num_layers)

    @property
    def present_names(self) -> list[str]:
        return kv_names("present", self.num_layers)


@dataclass
class LLMSpec(_KVCacheNames):
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_context: int


@dataclass
class SamplingSpec:
    first_turn: Sampling
    later_turns: Sampling
    max_new_tokens: int


@dataclass
class Token2WavSpec(_KVCacheNames):
    s_steps: int
    cfg_alpha: float
    upsample_factor: int  # latent frames per code
    hop: int  # samples per latent frame
    sample_rate: int
    z_dim: int
    latent_mean: list[float]
    latent_var: list[float]
    num_layers: int  # DiT blocks: the field's KV cache has two tensors per block
    conv_context: int  # frames of left context the field's position conv reads
    vocoder_context: int  # latent frames before an output frame that reach it (the causal convs)
    vocoder_lookahead: int  # latent frames after an output frame that reach it (conv_pre, anti-aliasing)


@dataclass
class SourceSpec:
    release: str  # the release folder's name (no absolute path: exports are byte-identical anywhere)
    checksums: dict[str, str]  # sha256 of the release's configs
    versions: dict[str, str]  # covo-edge, torch, onnx
    onnx_opset: int


@dataclass
class PrecisionSpec:
    """What `covo-edge quantize` did to the artifacts: absent from a plain export."""

    recipe: str
    purpose: str  # what the recipe is for, one line
    graphs: dict[str, str]  # graph -> its precision ("int4 weights (block 32, AWQ), float32 activations")
    targets: dict[str, str]  # backend or TensorRT target -> whether and how it runs these graphs
    calibration: str  # what the calibration data was ("12 wavs from ./calib", or the built-in fallback)
    versions: dict[str, str]  # the quantization libraries used
    report: str  # the accuracy report's file, beside manifest.json


@dataclass
class Manifest:
    schema_version: int
    dtype: str  # float32 | float16
    source: SourceSpec
    graphs: dict[str, GraphSpec]
    files: dict[str, FileSpec]  # every file of the artifacts but manifest.json, by relative path
    tokenizer: TokenizerSpec
    prompt: PromptSpec
    llm: LLMSpec
    sampling: SamplingSpec
    token2wav: Token2WavSpec
    voices: dict[str, str]  # name -> dir inside the artifacts
    precision: PrecisionSpec | None = None  # set by `covo-edge quantize`

    def graph_precision(self, graph: str) -> str:
        """One graph's precision: the recipe's word for it, else the export's dtype."""
        if self.precision is not None and graph in self.precision.graphs:
            return self.precision.graphs[graph]
        return self.dtype

    @property
    def num_audio_codes(self) -> int:
        return self.llm.vocab_size - self.tokenizer.audio_code_offset

    def save(self, directory: Path) -> None:
        (Path(directory) / MANIFEST).write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, directory: str | Path, check_sizes: bool = True) -> Manifest:
        """Read and check the contract: schema, graph names, dims; every file present with its size."""
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            what = "does not exist" if not directory.exists() else "has no manifest.json"
            raise ArtifactsError(f"{directory} {what}: pass a directory written by `covo-edge export`")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ArtifactsError(f"cannot read {path}: {e.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactsError(f"{path} is not valid JSON ({e}); re-run `covo-edge export`") from None
        if not isinstance(d, dict) or d.get("schema_version") != SCHEMA_VERSION:
            version = d.get("schema_version") if isinstance(d, dict) else None
            raise ArtifactsError(f"{path} has schema version {version}, this covo-edge reads {SCHEMA_VERSION}: "
                                 "re-export with this version")
        manifest = _parse(cls, d, "manifest.json")
        manifest.check_contract()
        if check_sizes:
            problems = manifest.file_problems(directory, checksums=False)
            if problems:
                name, why = next(iter(problems.items()))
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise ArtifactsError(f"{directory / name}: {why}{more}; restore the artifacts or re-run `covo-edge "
                                     f"export` (`covo-edge check {directory}` lists every file)")
        return manifest

    def check_contract(self) -> None:
        """Every graph present with the names the runtime feeds, and one value for every model dim."""
        for graph, (inputs, outputs) in GRAPH_IO.items():
            spec = self.graphs.get(graph)
            if spec is None:
                raise ArtifactsError(f"manifest.json lists no {graph} graph; re-run `covo-edge export`")
            cache = {"backbone": self.llm, "token2latent_field": self.token2wav}.get(graph)
            if cache is not None:
                inputs, outputs = (*inputs, *cache.past_names), (*outputs, *cache.present_names)
            got = ([t.name for t in spec.inputs], [t.name for t in spec.outputs])
            if got != (list(inputs), list(outputs)):
                raise ArtifactsError(f"manifest.json: the {graph} graph's inputs/outputs {got} are not the ones this "
                                     f"covo-edge feeds {(list(inputs), list(outputs))}; re-export with this version")
            unlisted = [f for f in spec.files if f not in self.files]
            if unlisted:
                raise ArtifactsError(f"manifest.json: {graph}'s file {unlisted[0]} has no size and checksum; re-export")
        for graph, tensor, axis, value, source in self._dims():
            spec = self.graphs[graph]
            t = next(t for t in [*spec.inputs, *spec.outputs] if t.name == tensor)
            if t.shape[axis] != value:
                raise ArtifactsError(f"manifest.json: {graph} {tensor} has {t.shape[axis]} on axis {axis} but "
                                     f"{source} is {value}; the manifest was edited or mixed: re-run `covo-edge export`")

    def _dims(self) -> list[tuple[str, str, int, int, str]]:
        """(graph, tensor, axis, value, where the value comes from) for every dim the runtime relies on."""
        llm, z = self.llm, self.token2wav.z_dim
        kv = [*llm.past_names, *llm.present_names]
        encoder_out = self.graphs["audio_encoder"].outputs[0].shape[2]
        conditioning = self.graphs["token2latent_codes"].outputs[0].shape[2]
        modulation = self.graphs["token2latent_time"].outputs[0].shape[1]
        return [
            ("audio_encoder", "mel", 1, N_MELS, "the frontend's mel bins"),
            ("audio_encoder", "mel", 2, MEL_FRAMES, "the frontend's frames per window"),
            ("audio_adapter", "hidden", 2, encoder_out, "the encoder's output width"),
            ("audio_adapter", "features", 2, llm.hidden_size, "llm.hidden_size"),
            ("embed_tokens", "inputs_embeds", 2, llm.hidden_size, "llm.hidden_size"),
            ("backbone", "inputs_embeds", 2, llm.hidden_size, "llm.hidden_size"),
            ("backbone", "logits", 1, llm.vocab_size, "llm.vocab_size"),
            *[("backbone", n, 1, llm.num_kv_heads, "llm.num_kv_heads") for n in kv],
            *[("backbone", n, 3, llm.head_dim, "llm.head_dim") for n in kv],
            ("token2latent_codes", "latent_cond", 2, z, "token2wav.z_dim"),
            ("token2latent_field", "conditioning", 2, conditioning, "the codes graph's conditioning width"),
            ("token2latent_field", "frames", 2, conditioning, "the codes graph's conditioning width"),
            ("token2latent_field", "conv_context", 1, self.token2wav.conv_context, "token2wav.conv_context"),
            ("token2latent_field", "modulation", 1, modulation, "the time graph's modulation width"),
            *[("token2latent_field", n, 2, z, "token2wav.z_dim") for n in ("x", "velocity")],
            ("vocoder", "latents", 1, z, "token2wav.z_dim"),
        ]

    def file_problems(self, directory: Path, checksums: bool) -> dict[str, str]:
        """Relative path -> what is wrong with it (missing, wrong size, and with `checksums` wrong sha256)."""
        problems = {}
        for name, spec in self.files.items():
            path = Path(directory) / name
            if not path.is_file():
                problems[name] = "missing"
            elif path.stat().st_size != spec.bytes:
                problems[name] = f"{path.stat().st_size} bytes, the manifest says {spec.bytes} (truncated or replaced)"
            elif checksums and sha256(path) != spec.sha256:
                problems[name] = "its sha256 differs from the manifest's (modified or replaced)"
        return problems


def _parse(tp: Any, value: Any, where: str) -> Any:
    """JSON -> the typed dataclasses above (nested dataclasses, lists and dicts of them), or an error
    naming the field that is missing or of the wrong kind."""
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ArtifactsError(f"{where} is not an object; re-run `covo-edge export`")
        hints = get_type_hints(tp)
        kwargs = {}
        for f in fields(tp):
            if f.name in value:
                kwargs[f.name] = _parse(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is MISSING and f.default_factory is MISSING:
                raise ArtifactsError(f"{where} lacks '{f.name}'; re-export with this covo-edge")
        return tp(**kwargs)
    origin, args = get_origin(tp), get_args(tp)
    if type(None) in args:  # Optional[X]: null stays None
        return None if value is None else _parse(next(a for a in args if a is not type(None)), value, where)
    if origin is list and is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ArtifactsError(f"{where} is not a list; re-run `covo-edge export`")
        return [_parse(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict and is_dataclass(args[1]):
        if not isinstance(value, dict):
            raise ArtifactsError(f"{where} is not an object; re-run `covo-edge export`")
        return {k: _parse(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return value
