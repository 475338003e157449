"""The quantization recipes: which graphs each one changes, how, and where the result runs.

Every recipe writes standard ONNX only (DequantizeLinear, QuantizeLinear): one graph serves both
backends. TensorRT parses it as is; ONNX Runtime fuses a block-wise int4 or per-channel int8
DequantizeLinear feeding a MatMul into its `MatMulNBits` kernel at load, with the accuracy level the runtime
sets (4: int8 compute on the CPU), which measured as fast as a graph written with `MatMulNBits` itself. The
math is the libraries': ONNX Runtime's block-wise int4 kernel and ModelOpt's quantizers, weight-only recipes
streamed one matrix at a time (`weight_stream`), and ModelOpt's ONNX PTQ (AWQ, int8 and fp8 Q/DQ with
calibration), whose output gets its LM head streamed the same way."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from covo_edge.runtime.errors import OptionError

from .capture import Calibration
from .weight_stream import WeightStream, int4_block, int8_channel

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
    out: Path  # where `graph.onnx` and `graph.onnx.data` go
    calibration: Calibration
    lm_head: str  # int8 | int4 | keep
    vocab_size: int
    dtype: str  # the artifacts' float dtype: float32 | float16


@dataclass(frozen=True)
class Recipe:
    name: str
    purpose: str
    graphs: tuple[str, ...]
    quantize: Callable[[Job], str]  # writes the graph into job.out, returns its precision in words
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


def save_graph(model: onnx.ModelProto, job: Job) -> None:
    """`graph.onnx` with its weights in `graph.onnx.data` (small constants stay inline, where shape inference
    reads them)."""
    onnx.save(model, str(job.out / f"{job.graph}.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{job.graph}.onnx.data")


def modelopt(job: Job, mode: str, method: str, exclude: list[str], prefills: int = PREFILLS,
             block_size: int | None = None) -> Path:
    """ModelOpt's ONNX PTQ on a scratch copy (it writes beside its input), calibrated on the recorded feeds;
    returns the quantized graph's path."""
    from modelopt.onnx.quantization import quantize

    for f in job.source.parent.glob(job.source.name + "*"):
        shutil.copyfile(f, job.scratch / f.name)
    out = job.scratch / f"{job.graph}.quant.onnx"
    logging.getLogger("modelopt").setLevel(logging.ERROR)
    quantize(str(job.scratch / job.source.name), quantize_mode=mode, calibration_method=method,
             calibration_data_reader=job.calibration.reader(job.graph, MODELOPT_SAMPLES, prefills), calibration_eps=["cpu"],
             nodes_to_exclude=exclude, output_path=str(out), use_external_data_format=True, log_level="ERROR",
             high_precision_dtype={"float32": "fp32", "float16": "fp16"}[job.dtype], block_size=block_size)
    return out


def _backbone(job: Job, body: str, body_op: Callable | None = None, quantized: Path | None = None,
              opset: int = 13) -> str:
    """The backbone with its body quantized (streamed with `body_op`, or already by a tool into `quantized`)
    and the LM head (168055 x 3584 in the release: a quarter of the int4 bytes per token) at its own precision,
    streamed into the output one matrix at a time."""
    stream = WeightStream(quantized or job.source, job.out, job.graph)
    lm = lm_head_node(stream.model, job.vocab_size)
    chosen = {n: body_op for n in _weight_matmuls(stream.model) if n != lm} if body_op else {}
    words = f"{body}, {job.dtype} activations; LM head {job.dtype}"
    if lm is not None and job.lm_head == "int4":
        chosen[lm], opset = int4_block(BLOCK), 21
        words = f"{body}, {job.dtype} activations; LM head int4 weights (block {BLOCK}, RTN)"
    elif lm is not None and job.lm_head == "int8":
        chosen[lm] = int8_channel
        words = f"{body}, {job.dtype} activations; LM head int8 weights (per channel, RTN)"
    stream.rewrite(chosen, opset)
    return words


def _int4_awq(job: Job) -> str:
    # AWQ-clip stacks the activations of its samples: the one-token decode steps all share one shape.
    lm = lm_head_node(onnx.load(str(job.source), load_external_data=False), job.vocab_size)
    out = modelopt(job, "int4", "awq_clip", [lm] if lm else [], prefills=0, block_size=BLOCK)
    return _backbone(job, f"int4 weights (block {BLOCK}, symmetric, AWQ-clip)", quantized=out, opset=21)


def _int4_rtn(job: Job) -> str:
    return _backbone(job, f"int4 weights (block {BLOCK}, symmetric, RTN)", int4_block(BLOCK), opset=21)


def _int8_weights(job: Job) -> str:
    return _backbone(job, "int8 weights (per channel, symmetric, RTN)", int8_channel)


def _qdq(mode: str, words: str) -> Callable[[Job], str]:
    def run(job: Job) -> str:
        if job.graph != "backbone":
            save_graph(onnx.load(str(modelopt(job, mode, "max", []))), job)
            return f"{words}, {job.dtype} elsewhere"
        lm = lm_head_node(onnx.load(str(job.source), load_external_data=False), job.vocab_size)
        return _backbone(job, words, quantized=modelopt(job, mode, "max", [lm] if lm else []))

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
