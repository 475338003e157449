"""The quantization recipes: which graphs each one changes, how, and where the result runs.

Every recipe writes standard ONNX only (DequantizeLinear, QuantizeLinear): one graph serves both
backends. TensorRT parses it as is; ONNX Runtime fuses a block-wise int4 or per-channel int8
DequantizeLinear feeding a MatMul into its `MatMulNBits` kernel at load, with the accuracy level the runtime
sets (4: int8 compute on the CPU), which measured as fast as a graph written with `MatMulNBits` itself. The
math is the libraries': ONNX Runtime's quantization tools (`MatMulNBitsQuantizer`, its quantization
utilities) and NVIDIA ModelOpt's ONNX PTQ (AWQ, int8 and fp8 Q/DQ with calibration).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from covo_edge.runtime.errors import OptionError

from .capture import Calibration

# ModelOpt keeps every intermediate tensor of every calibration sample, and a decode step's attention
# tensors grow with its history: on the small model AWQ held 17.5 GB over 128 decode steps, and int8 max
# calibration ran out of 24 GB over 32 steps and 2 prefills. So: at most this many decode steps, spread over
# the recording, and at most PREFILLS question prefills (ModelOpt's per-node mode, which needs less memory,
# took over 10 minutes on the tiny model).
MODELOPT_SAMPLES = 8
PREFILLS = 2
BLOCK = 32  # int4 block: ONNX Runtime's CPU kernels and the genai model builder use 32
LM_HEADS = ("int8", "int4", "keep")
RTX = "TensorRT-RTX: Ampere (8.6), Ada (8.9), Blackwell (12.x)"


@dataclass
class Job:
    """What a recipe needs to quantize one graph."""

    graph: str
    source: Path  # the graph's .onnx in the source artifacts
    scratch: Path  # an empty directory for intermediate files
    calibration: Calibration
    lm_head: str  # int8 | int4 | keep
    vocab_size: int
    dtype: str  # the artifacts' float dtype: float32 | float16


@dataclass(frozen=True)
class Recipe:
    name: str
    purpose: str
    graphs: tuple[str, ...]
    quantize: Callable[[Job], tuple[onnx.ModelProto, str]]  # -> the graph, its precision in words
    targets: dict[str, str]
    calibrated: bool


def lm_head_node(model: onnx.ModelProto, vocab_size: int) -> str | None:
    """The MatMul whose constant weight ends in the vocabulary: the LM head (its own precision knob)."""
    weights = {t.name: t.dims for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "MatMul" and list(weights.get(node.input[1], []))[-1:] == [vocab_size]:
            return node.name
    return None


def _weight_matmuls(model: onnx.ModelProto) -> list[str]:
    weights = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def _opset_at_least(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < version:
            o.version = version
    return model


def int4_rtn(model: onnx.ModelProto, exclude: list[str] = (), include: list[str] | None = None) -> onnx.ModelProto:
    """Symmetric block-wise int4 weights, round to nearest (ONNX Runtime's `MatMulNBitsQuantizer`, QDQ form:
    int4 DequantizeLinear with `block_size`, opset 21)."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(model, bits=4, block_size=BLOCK, is_symmetric=True, quant_format=QuantFormat.QDQ,
                             op_types_to_quantize=("MatMul",), nodes_to_exclude=list(exclude),
                             nodes_to_include=include)
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # a line per node otherwise
    q.process()
    return _opset_at_least(q.model.model, 21)


def int8_weights(model: onnx.ModelProto, nodes: list[str]) -> onnx.ModelProto:
    """Symmetric per-output-channel int8 weights, round to nearest, for these MatMuls (ModelOpt's quantizer,
    one block spanning the input dim): an int8 initializer and a DequantizeLinear (axis 1) before each."""
    from modelopt.onnx.quantization.quant_utils import quant_tensor

    weights = {t.name: t for t in model.graph.initializer}
    chosen = set(nodes)
    nodes_out = []
    for node in model.graph.node:
        if node.name in chosen:
            w = weights[node.input[1]]
            array = numpy_helper.to_array(w)
            q, scale, _ = quant_tensor(array, block_size=array.shape[0], quantize_axis=0, num_bits=8)
            model.graph.initializer.remove(w)
            model.graph.initializer.extend([numpy_helper.from_array(q.astype(np.int8), f"{w.name}_int8"),
                                            numpy_helper.from_array(scale.reshape(-1).astype(array.dtype),
                                                                    f"{w.name}_scale")])
            nodes_out.append(helper.make_node("DequantizeLinear", [f"{w.name}_int8", f"{w.name}_scale"],
                                              [f"{w.name}_dq"], name=f"{node.name}_dq", axis=1))
            node.input[1] = f"{w.name}_dq"
        nodes_out.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes_out)
    return _opset_at_least(model, 13)


def modelopt(job: Job, mode: str, method: str, exclude: list[str], prefills: int = PREFILLS,
             block_size: int | None = None) -> onnx.ModelProto:
    """ModelOpt's ONNX PTQ on a scratch copy (it writes beside its input), calibrated on the recorded feeds."""
    from modelopt.onnx.quantization import quantize

    for f in job.source.parent.glob(job.source.name + "*"):
        shutil.copyfile(f, job.scratch / f.name)
    out = job.scratch / f"{job.graph}.quant.onnx"
    logging.getLogger("modelopt").setLevel(logging.ERROR)
    quantize(str(job.scratch / job.source.name), quantize_mode=mode, calibration_method=method,
             calibration_data_reader=job.calibration.reader(job.graph, MODELOPT_SAMPLES, prefills), calibration_eps=["cpu"],
             nodes_to_exclude=exclude, output_path=str(out), use_external_data_format=True, log_level="ERROR",
             high_precision_dtype={"float32": "fp32", "float16": "fp16"}[job.dtype], block_size=block_size)
    return onnx.load(str(out))


def with_lm_head(job: Job, model: onnx.ModelProto, lm: str | None, body: str) -> tuple[onnx.ModelProto, str]:
    """The LM head (168055 x 3584 in the release: a quarter of the int4 bytes per token) at its own precision."""
    if lm is None or job.lm_head == "keep":
        return model, f"{body}; LM head {job.dtype}"
    if job.lm_head == "int4":
        return int4_rtn(model, include=[lm]), f"{body}; LM head int4 weights (block {BLOCK}, RTN)"
    return int8_weights(model, [lm]), f"{body}; LM head int8 weights (per channel, RTN)"


def _backbone(job: Job, quantize_body: Callable[[onnx.ModelProto, list[str]], onnx.ModelProto], body: str):
    model = onnx.load(str(job.source))
    lm = lm_head_node(model, job.vocab_size)
    exclude = [lm] if lm else []
    return with_lm_head(job, quantize_body(model, exclude), lm, f"{body}, {job.dtype} activations")


def _int4_awq(job: Job) -> tuple[onnx.ModelProto, str]:
    # AWQ-clip stacks the activations of its samples: the one-token decode steps all share one shape.
    return _backbone(job, lambda m, ex: modelopt(job, "int4", "awq_clip", ex, prefills=0, block_size=BLOCK),
                     f"int4 weights (block {BLOCK}, symmetric, AWQ-clip)")


def _int4_rtn(job: Job) -> tuple[onnx.ModelProto, str]:
    return _backbone(job, lambda m, ex: int4_rtn(m, exclude=ex), f"int4 weights (block {BLOCK}, symmetric, RTN)")


def _int8_weights(job: Job) -> tuple[onnx.ModelProto, str]:
    return _backbone(job, lambda m, ex: int8_weights(m, [n for n in _weight_matmuls(m) if n not in ex]),
                     "int8 weights (per channel, symmetric, RTN)")


def _qdq(mode: str, words: str) -> Callable[[Job], tuple[onnx.ModelProto, str]]:
    def run(job: Job) -> tuple[onnx.ModelProto, str]:
        if job.graph != "backbone":
            return modelopt(job, mode, "max", []), f"{words}, {job.dtype} elsewhere"
        return _backbone(job, lambda m, ex: modelopt(job, mode, "max", ex), words)

    return run


NO_OPSET_21 = "no: block-wise DequantizeLinear is opset 21; JetPack 6's parser reads opsets 9 to 20"
RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("int4-awq", "smallest and fastest decode: backbone weights int4, AWQ-calibrated (ModelOpt); GPU and CPU",
           ("backbone",), _int4_awq,
           {"onnxruntime": "CPU and CUDA (fused into MatMulNBits)", "tensorrt-rtx": RTX,
            "tensorrt-10.3 (JetPack 6)": NO_OPSET_21, "tensorrt-10.8+/11 (x86, JetPack 7)": "yes"}, True),
    Recipe("int4-rtn", "the int4 baseline without calibration: round to nearest (ONNX Runtime's quantizer)",
           ("backbone",), _int4_rtn,
           {"onnxruntime": "CPU and CUDA (fused into MatMulNBits)", "tensorrt-rtx": RTX,
            "tensorrt-10.3 (JetPack 6)": NO_OPSET_21, "tensorrt-10.8+/11 (x86, JetPack 7)": "yes"}, False),
    Recipe("int8-weights", "half the fp16 bytes with little loss: backbone weights int8 per channel; every target",
           ("backbone",), _int8_weights,
           {"onnxruntime": "CPU and CUDA (fused into MatMulNBits)", "tensorrt-rtx": RTX,
            "tensorrt-10.3 (JetPack 6)": "yes", "tensorrt-10.8+/11 (x86, JetPack 7)": "yes"}, False),
    Recipe("int8-w8a8", "int8 tensor-core math for long prompts: encoder and backbone weights and activations int8 "
                        "(ModelOpt, max calibration)",
           ("audio_encoder", "backbone"), _qdq("int8", "int8 weights and activations (Q/DQ, max calibration)"),
           {"onnxruntime": "runs, for checking only: Q/DQ activations are emulated on the CPU (16x fp32's decode "
                            "time, measured)", "tensorrt-rtx": RTX,
            "tensorrt-10.3 (JetPack 6)": "yes", "tensorrt-10.8+/11 (x86, JetPack 7)": "yes"}, True),
    Recipe("fp8", "fp8 tensor-core math on Ada, Hopper, Blackwell and Thor: encoder and backbone in fp8 E4M3 "
                  "(ModelOpt, max calibration)",
           ("audio_encoder", "backbone"), _qdq("fp8", "fp8 E4M3 weights and activations (Q/DQ, max calibration)"),
           {"onnxruntime": "runs, for checking only: Q/DQ is emulated on the CPU", "tensorrt-rtx": "Ada (8.9), Blackwell (12.x)",
            "tensorrt-10.3 (JetPack 6)": "no: Orin (8.7) has no fp8", "tensorrt-10.8+/11 (x86, JetPack 7)":
            "Ada, Hopper, Blackwell, Thor"}, True),
]}


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise OptionError(f"--recipe must be one of {', '.join(RECIPES)}, got {name!r} (`covo-edge quantize --list`)")
    return RECIPES[name]
