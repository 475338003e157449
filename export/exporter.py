"""`covo-edge export`: a release directory -> an artifacts directory of ONNX graphs + manifest.json.

Everything is written to a temporary sibling directory and renamed at the end, so a failed export
never leaves a half-written artifacts directory behind. The graphs carry nothing of the machine they
were exported on (no stack traces, no paths): two exports of one release are byte-identical, so a
checksum identifies a model.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common
import torch
from onnxscript.optimizer import fold_constants_ir
from torch.utils._pytree import tree_map
from tqdm import tqdm

from covo_edge.runtime.errors import OptionError
from covo_edge.runtime.files import staged_directory
from covo_edge.runtime.manifest import (
    SCHEMA_VERSION, GraphSpec, LLMSpec, Manifest, PromptSpec, SamplingSpec, SourceSpec, TensorSpec,
    TokenizerSpec, Token2WavSpec, file_specs, sha256,
)
from covo_edge.runtime.prompt import SYSTEM_PROMPT, turn_template
from covo_edge.runtime.sampling import FIRST_TURN, LATER_TURNS
from covo_edge.runtime.token2wav import VOICE_FILES

from .config import ReleaseError
from .graphs import GraphExport, audio_adapter, audio_encoder, backbone, embed_tokens, token2latent, vocoder
from .release import LazyWeights, Release, load_covo, load_token2wav
from .vocoder import receptive_field

OPSET = 18
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
SPECIAL_IDS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begofcAUDIO|>", "<|cAUDIO|>", "<|endofcAUDIO|>")
ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
               onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32"}
MIN_CONTEXT = 256  # the system prompt and a short question
FOLD_LIMIT = 8192  # constant folding leaves larger tensors alone, bar Transpose: those stay on disk until written


def _specs(values) -> list[TensorSpec]:
    return [
        TensorSpec(
            name=v.name,
            dtype=ONNX_DTYPES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type)),
            shape=[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        )
        for v in values
    ]


def strip_provenance(model: onnx.ModelProto) -> None:
    """Drop what ties the bytes to this machine: torch's per-node stack traces (absolute paths of the
    clone and the venv), FX node names, scopes and doc strings. The math is untouched."""
    g = model.graph
    for proto in [model, g, *g.node, *g.input, *g.output, *g.value_info, *g.initializer]:
        proto.ClearField("metadata_props")
        if hasattr(proto, "doc_string"):
            proto.doc_string = ""


def bind_lazy(model: ir.Model, lazy: LazyWeights) -> None:
    """Swap each placeholder initializer for a read of the checkpoint at save time, folding a Transpose that
    is its only use into the read (what constant folding would do, holding every transposed copy at once)."""
    graph = model.graph
    for v in list(graph.initializers.values()):
        raw = getattr(v.const_value, "raw", None)
        stored = lazy.source(raw) if isinstance(raw, torch.Tensor) else None
        if stored is None:
            continue
        uses = v.uses()
        node = uses[0].node if len(uses) == 1 else None
        if node is None or node.op_type != "Transpose" or node.outputs[0].is_graph_output():
            v.const_value = ir.LazyTensor(lambda s=stored: ir.Tensor(lazy.read(s)), v.const_value.dtype,
                                          v.const_value.shape, name=v.name)
            continue
        perm = node.attributes["perm"].as_ints()
        out = node.outputs[0]
        shape = ir.Shape([stored.shape[i] for i in perm])
        folded = ir.Value(shape=shape, type=ir.TensorType(v.const_value.dtype), const_value=ir.LazyTensor(
            lambda s=stored, p=perm: ir.Tensor(lazy.read(s, p)), v.const_value.dtype, shape))
        out.replace_all_uses_with(folded)
        graph.remove(node, safe=True)
        graph.initializers.pop(v.name)
        folded.name = folded.const_value.name = out.name
        graph.register_initializer(folded)


def simplify(model: ir.Model) -> None:
    """Constant folding and clean-up, without onnxscript's pattern rewriter: ONNX Runtime and TensorRT fuse
    at load what it would (the vocoder runs as fast either way), and it took two thirds of the export."""
    fold_constants_ir(model, input_size_limit=FOLD_LIMIT)
    for step in (common.RemoveUnusedNodesPass(), common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                 common.DeduplicateInitializersPass(), common.CommonSubexpressionEliminationPass(),
                 common.RemoveUnusedNodesPass()):
        step(model)


def export_graph(g: GraphExport, out: Path, lazy: LazyWeights | None = None) -> GraphSpec:
    """Trace with torch.export, write ONNX (external data beside it), strip provenance, check, describe its I/O.
    With `lazy`, the module's placeholder weights are read from the checkpoint one by one as they are written."""
    path = out / g.file
    dtype = next(g.module.parameters()).dtype
    args = tree_map(lambda t: t.to(dtype) if t.is_floating_point() else t, g.args)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            g.module.eval(), args, input_names=g.inputs, output_names=g.outputs,
            dynamic_shapes=g.dynamic_shapes, dynamo=True, opset_version=OPSET, verbose=False, optimize=False,
        )
        if lazy is not None:
            bind_lazy(program.model, lazy)
        simplify(program.model)
        program.save(str(path), external_data=True)
    model = onnx.load(str(path), load_external_data=False)
    strip_provenance(model)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    external = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    return GraphSpec(file=g.file, inputs=_specs(model.graph.input), outputs=_specs(model.graph.output),
                     profiles=[{k: list(v) for k, v in p.items()} for p in g.profiles], external_data=external)


def export_release(model_dir: str | Path, out_dir: str | Path, dtype: str = "fp32", voices: list[str] | None = None,
                   max_context: int = 8192, force: bool = False, quiet: bool = False) -> Path:
    """Export every graph and write the manifest; with `force`, replace an earlier export in `out_dir`."""
    if dtype not in DTYPES:
        raise OptionError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    release = Release.open(model_dir)
    positions = release.config.llm.max_position_embeddings
    if not MIN_CONTEXT <= max_context <= positions:
        raise OptionError(f"--max-context must be between {MIN_CONTEXT} and the model's {positions} positions, "
                          f"got {max_context}")
    with staged_directory(out_dir, "export", force=force) as tmp:
        _export(release, tmp, DTYPES[dtype], voices, max_context, quiet)
    return Path(out_dir)


def _export(release: Release, out: Path, torch_dtype: torch.dtype, voices: list[str] | None, max_context: int,
            quiet: bool) -> None:
    chosen = [release.voice(v) for v in voices] if voices else [release.voice()]
    lazy = LazyWeights(torch_dtype, FOLD_LIMIT)
    model = load_covo(release, torch_dtype, lazy)  # the big weights stay on disk until their graph is written
    t2w = load_token2wav(release)
    vocoder_reach = receptive_field(t2w.wavegan, t2w.config.vocoder.hop)  # measured in float64, before casting
    t2w.token2latent.to(torch_dtype)  # the latent stats stay float32 for the manifest
    t2w.wavegan.to(torch_dtype)
    graphs = [
        audio_encoder.graph(model), audio_adapter.graph(model), embed_tokens.graph(model),
        backbone.graph(model, max_context), *token2latent.graphs(t2w), vocoder.graph(t2w),
    ]
    specs = {}
    for g in tqdm(graphs, desc="export", unit="graph", disable=quiet):
        specs[g.name] = export_graph(g, out, lazy)
    for f in TOKENIZER_FILES:
        if (release.root / f).is_file():
            shutil.copyfile(release.root / f, out / f)
    for v in chosen:
        (out / "voices" / v.name).mkdir(parents=True)
        for name in VOICE_FILES:
            np.save(out / "voices" / v.name / name, getattr(v, name.removesuffix(".npy"))[None])
    _manifest(release, model, t2w, vocoder_reach, chosen, specs, out, torch_dtype, max_context).save(out)


def _manifest(release: Release, model, t2w, vocoder_reach: tuple[int, int], voices, specs: dict[str, GraphSpec],
              out: Path, torch_dtype: torch.dtype, max_context: int) -> Manifest:
    from tokenizers import Tokenizer

    config = model.config
    tok = Tokenizer.from_file(str(release.tokenizer_file))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_IDS}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise ReleaseError(f"{release.tokenizer_file} lacks {', '.join(missing)}: not a Covo-Audio-Chat tokenizer")
    if tok.get_vocab_size(with_added_tokens=True) != config.audio_token_index:
        raise ReleaseError(f"len(tokenizer) is {tok.get_vocab_size(with_added_tokens=True)} but config.json's "
                           f"audio_token_index is {config.audio_token_index}: they must agree (audio codes start there)")
    cfg = t2w.config
    if config.num_audio_codes != cfg.dit.token_vocab_size:
        raise ReleaseError(f"the LLM has {config.num_audio_codes} audio code ids but token2wav embeds "
                           f"{cfg.dit.token_vocab_size}: config.json and token2wav/config.json are from different models")
    return Manifest(
        schema_version=SCHEMA_VERSION,
        dtype={torch.float32: "float32", torch.float16: "float16"}[torch_dtype],
        source=SourceSpec(
            release=release.root.resolve().name,
            checksums={f: sha256(release.root / f) for f in ("config.json", "token2wav/config.json")},
            versions={"covo-edge": version("covo-edge"), "torch": torch.__version__, "onnx": onnx.__version__},
            onnx_opset=OPSET,
        ),
        graphs=specs,
        files=file_specs(out),
        tokenizer=TokenizerSpec(files=[f for f in TOKENIZER_FILES if (out / f).is_file()], ids=ids,
                                audio_code_offset=config.audio_token_index),
        prompt=PromptSpec(system=SYSTEM_PROMPT, first_turn=turn_template(True), later_turn=turn_template(False)),
        llm=LLMSpec(num_layers=config.llm.num_hidden_layers, num_kv_heads=config.llm.num_key_value_heads,
                    head_dim=config.head_dim, hidden_size=config.llm.hidden_size, vocab_size=config.llm.vocab_size,
                    max_context=max_context),
        sampling=SamplingSpec(first_turn=FIRST_TURN, later_turns=LATER_TURNS, max_new_tokens=2048),
        token2wav=Token2WavSpec(s_steps=cfg.s_steps, cfg_alpha=cfg.cfg_alpha, upsample_factor=cfg.dit.upsample_factor,
                                hop=cfg.vocoder.hop, sample_rate=cfg.sample_rate, z_dim=cfg.dit.z_dim,
                                latent_mean=t2w.global_mean.tolist(), latent_var=t2w.global_var.tolist(),
                                num_layers=cfg.dit.num_layers, conv_context=cfg.dit.conv_kernel // 2,
                                vocoder_context=vocoder_reach[0], vocoder_lookahead=vocoder_reach[1]),
        voices={v.name: f"voices/{v.name}" for v in voices},
    )
