"""`covo-edge export`: a release directory -> an artifacts directory of ONNX graphs + manifest.json.

Everything is written to a temporary sibling directory and renamed at the end, so a failed export
never leaves a half-written artifacts directory behind.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch
from torch.utils._pytree import tree_map
from tqdm import tqdm

from covo_edge.runtime.manifest import SCHEMA_VERSION, GraphSpec, Manifest, TensorSpec
from covo_edge.runtime.sampling import FIRST_TURN, LATER_TURNS
from covo_edge.runtime.token2wav import VOICE_FILES

from . import audio
from .graphs import GraphExport, audio_adapter, audio_encoder, backbone, embed_tokens, token2latent, vocoder
from .pipeline import prompt_text
from .release import Release, load_covo, load_token2wav
from .staging import staged_directory
from .tokenizer import DEFAULT_SYSTEM_PROMPT

OPSET = 18
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
ONNX_DTYPES_BY_TORCH = {torch.float32: "float32", torch.float16: "float16"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
               onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32"}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _specs(values) -> list[TensorSpec]:
    return [
        TensorSpec(
            name=v.name,
            dtype=ONNX_DTYPES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type)),
            shape=[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        )
        for v in values
    ]


def export_graph(g: GraphExport, out: Path) -> GraphSpec:
    """Trace with torch.export, write ONNX (external data beside it), check it fully, describe its I/O."""
    path = out / g.file
    dtype = next(g.module.parameters()).dtype
    args = tree_map(lambda t: t.to(dtype) if t.is_floating_point() else t, g.args)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            g.module.eval(), args, input_names=g.inputs, output_names=g.outputs,
            dynamic_shapes=g.dynamic_shapes, dynamo=True, opset_version=OPSET, verbose=False,
        )
        program.save(str(path), external_data=True)
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    external = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    return GraphSpec(file=g.file, inputs=_specs(model.graph.input), outputs=_specs(model.graph.output),
                     sha256=sha256(path), profiles=[{k: list(v) for k, v in p.items()} for p in g.profiles], external_data=external)


def export_release(model_dir: str | Path, out_dir: str | Path, dtype: str = "fp32",
                   voices: list[str] | None = None, max_context: int = 8192, quiet: bool = False) -> Path:
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    with staged_directory(out_dir) as tmp:
        _export(Release.open(model_dir), tmp, DTYPES[dtype], voices, max_context, quiet)
    return Path(out_dir)


def _export(release: Release, out: Path, torch_dtype: torch.dtype, voices: list[str] | None, max_context: int,
            quiet: bool) -> None:
    model = load_covo(release, torch_dtype)  # bf16 checkpoint -> fp16 shard by shard: no fp32 copy
    t2w = load_token2wav(release)
    t2w.token2latent.to(torch_dtype)  # the latent stats stay float32 for the manifest
    t2w.wavegan.to(torch_dtype)
    chosen = [release.voice(v) for v in voices] if voices else [release.voice()]
    graphs = [
        audio_encoder.graph(model), audio_adapter.graph(model), embed_tokens.graph(model),
        backbone.graph(model, max_context), *token2latent.graphs(t2w), vocoder.graph(t2w),
    ]
    specs = {}
    for g in tqdm(graphs, desc="export", unit="graph", disable=quiet):
        specs[g.name] = export_graph(g, out)
    _manifest(release, model, t2w, chosen, specs, out, ONNX_DTYPES_BY_TORCH[torch_dtype], max_context).save(out)


def _manifest(release, model, t2w, voices, specs, out: Path, dtype: str, max_context: int) -> Manifest:
    from tokenizers import Tokenizer

    for f in TOKENIZER_FILES:
        if (release.root / f).is_file():
            shutil.copy2(release.root / f, out / f)
    tok = Tokenizer.from_file(str(release.tokenizer_file))
    ids = {t: tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begofcAUDIO|>",
                                           "<|cAUDIO|>", "<|endofcAUDIO|>")}
    for v in voices:
        (out / "voices" / v.name).mkdir(parents=True)
        for name in VOICE_FILES:
            np.save(out / "voices" / v.name / name, getattr(v, name.removesuffix(".npy"))[None])
    llm = model.config.llm
    cfg = t2w.config
    return Manifest(
        schema_version=SCHEMA_VERSION,
        dtype=dtype,
        source={
            "release": str(release.root.resolve()),
            "checksums": {f: sha256(release.root / f) for f in ("config.json", "token2wav/config.json")},
            "torch": torch.__version__,
            "onnx_opset": OPSET,
        },
        graphs=specs,
        tokenizer={"files": [f for f in TOKENIZER_FILES if (out / f).is_file()],
                   "len": tok.get_vocab_size(with_added_tokens=True), "ids": ids,
                   "audio_code_offset": model.config.audio_token_index,
                   "num_audio_codes": model.config.num_audio_codes},
        prompt={"system": DEFAULT_SYSTEM_PROMPT,
                "first_turn": prompt_text("{audio}", True, "{system}"),
                "later_turn": prompt_text("{audio}", False, "{system}"),
                "audio_slot": "<|cAUDIO|>"},
        llm={"num_layers": llm.num_hidden_layers, "num_kv_heads": llm.num_key_value_heads,
             "head_dim": llm.hidden_size // llm.num_attention_heads, "hidden_size": llm.hidden_size,
             "vocab_size": llm.vocab_size, "max_context": min(max_context, llm.max_position_embeddings)},
        sampling={"first_turn": asdict(FIRST_TURN), "later_turns": asdict(LATER_TURNS), "max_new_tokens": 2048},
        token2wav={"s_steps": cfg.s_steps, "cfg_alpha": cfg.cfg_alpha, "upsample_factor": cfg.dit.upsample_factor,
                   "hop": cfg.vocoder.hop, "sample_rate": cfg.sample_rate, "z_dim": cfg.dit.z_dim,
                   "latent_mean": t2w.global_mean.tolist(), "latent_var": t2w.global_var.tolist()},
        voices={v.name: f"voices/{v.name}" for v in voices},
        frontend={"sample_rate": audio.SAMPLE_RATE, "frame": audio.FRAME, "pad_multiple": audio.PAD_MULTIPLE,
                  "segment": audio.SEGMENT, "mel_rate": audio.MEL_RATE, "n_fft": audio.N_FFT, "hop": audio.HOP,
                  "n_mels": audio.N_MELS, "mel_frames": audio.MEL_FRAMES, "adapter_frames": audio.ADAPTER_FRAMES},
    )
