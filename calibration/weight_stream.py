"""Weight-only quantization that holds one matrix at a time.

A graph is opened without its external data; each initializer is read from the source's data file when its
turn comes and written to the output's data file at once (the quantized ones as they are made), so quantizing
a 15 GB backbone takes about the memory of its largest matrix, not the source and the result side by side as a
whole-model quantizer does. The math is the libraries': ONNX Runtime's block-wise int4 kernel (the one its
`MatMulNBitsQuantizer` calls) and ModelOpt's per-channel int8; the graph written is what those tools write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

INLINE_BYTES = 1024  # smaller tensors stay in the .onnx, where shape inference reads them (as onnx.save does)
ALIGN = 4096  # each tensor starts page-aligned in the data file, so a runtime can map it
COLUMNS = 16384  # per-channel int8 works on this many output channels at a time (the LM head has 168055)


@dataclass
class Quantized:
    """What replaces one MatMul's weight: new initializers (name, ONNX type, dims, raw bytes) and the nodes that
    take the MatMul's place."""

    tensors: list[tuple[str, int, list[int], np.ndarray]]  # the array holds the raw bytes (int4: packed)
    nodes: list[onnx.NodeProto]


class WeightStream:
    """One graph's rewrite: `source` (.onnx with external data) -> `out_dir/name.onnx` + `name.onnx.data`."""

    def __init__(self, source: Path, out_dir: Path, name: str):
        self.source = source
        self.model = onnx.load(str(source), load_external_data=False)
        self.out = out_dir / f"{name}.onnx"
        self.location = f"{name}.onnx.data"
        self.data = open(out_dir / self.location, "wb")

    def read(self, t: TensorProto) -> np.ndarray:
        """An initializer's values, read from its file (not mapped: the pages do not stay resident)."""
        if t.data_location != TensorProto.EXTERNAL:
            return onnx.numpy_helper.to_array(t)
        info = {e.key: e.value for e in t.external_data}
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        out = np.empty(tuple(t.dims), dtype)
        with open(self.source.parent / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            if f.readinto(memoryview(out.reshape(-1).view(np.uint8))) != out.nbytes:
                raise OSError(f"{self.source}: the data of {t.name} is truncated")
        return out

    def raw(self, t: TensorProto) -> np.ndarray:
        """An external initializer's stored bytes as they are (int4 and fp4 stay packed two to a byte)."""
        info = {e.key: e.value for e in t.external_data}
        with open(self.source.parent / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            data = f.read(int(info["length"]))
        return np.frombuffer(data, np.uint8)

    def tensor(self, name: str, data_type: int, dims: list[int], values: np.ndarray) -> TensorProto:
        """A new initializer holding `values`' bytes: inline when small, else appended to the output's data file."""
        raw = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
        if raw.nbytes < INLINE_BYTES:
            return helper.make_tensor(name, data_type, dims, raw.tobytes(), raw=True)
        self.data.seek(-self.data.tell() % ALIGN, 1)
        offset = self.data.tell()
        self.data.write(memoryview(raw))
        t = TensorProto(name=name, data_type=data_type, dims=dims, data_location=TensorProto.EXTERNAL)
        for k, v in (("location", self.location), ("offset", str(offset)), ("length", str(raw.nbytes))):
            t.external_data.add(key=k, value=v)
        return t

    def rewrite(self, chosen: dict[str, Callable[[onnx.NodeProto, np.ndarray], Quantized]], opset: int) -> None:
        """Replace the weight of each chosen MatMul (by node name) with what its function makes; every other
        initializer is copied over as it is. Writes the graph, at `opset` or above."""
        graph = self.model.graph
        originals = {t.name: t for t in graph.initializer}
        outputs = {o.name for o in graph.output}
        uses: dict[str, int] = {}
        for node in graph.node:
            for i in node.input:
                uses[i] = uses.get(i, 0) + 1
        made: list[TensorProto] = []
        nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            fn = chosen.get(node.name)
            if fn is None:
                nodes.append(node)
                continue
            w = originals[node.input[1]]
            q = fn(node, self.read(w))
            made += [self.tensor(*t) for t in q.tensors]
            nodes += q.nodes
            uses[w.name] -= 1
        survivors = []
        for t in graph.initializer:
            if uses.get(t.name, 0) == 0 and t.name not in outputs:
                continue  # its only MatMuls now read the quantized copy
            if t.data_location == TensorProto.EXTERNAL:
                survivors.append(self.tensor(t.name, t.data_type, list(t.dims), self.raw(t)))
            else:
                survivors.append(TensorProto())
                survivors[-1].CopyFrom(t)
        self.data.close()
        del graph.initializer[:]
        graph.initializer.extend(survivors + made)
        del graph.node[:]
        graph.node.extend(nodes)
        for o in self.model.opset_import:
            if o.domain in ("", "ai.onnx") and o.version < opset:
                o.version = opset
        onnx.save(self.model, str(self.out))


def int4_block(block: int) -> Callable[[onnx.NodeProto, np.ndarray], Quantized]:
    """Symmetric block-wise int4 along K with ONNX Runtime's kernel, in the QDQ form its quantizer writes:
    an int4 [K, N] weight and [K/block, N] scales into a DequantizeLinear (axis 0, `block_size`)."""
    from onnxruntime.capi._pybind_state import quantize_qdq_matmul_4bits

    def run(node: onnx.NodeProto, w: np.ndarray) -> Quantized:
        rows, cols = w.shape
        k_blocks = -(-rows // block)
        packed = np.zeros((rows * cols + 1) // 2, np.uint8)
        zero_point = np.zeros((cols * k_blocks + 1) // 2, np.uint8)
        scales = np.zeros((k_blocks, cols), w.dtype)
        quantize_qdq_matmul_4bits(packed, np.ascontiguousarray(w), scales, zero_point, block, cols, rows, True)
        name = node.input[1]
        q, s, dq = f"{name}_DQ_Q4", f"{name}_DQ_scales", f"{name}_DQ_Q4_output"
        return Quantized(
            [(q, TensorProto.INT4, [rows, cols], packed),
             (s, helper.np_dtype_to_tensor_dtype(scales.dtype), [k_blocks, cols], scales)],
            [helper.make_node("DequantizeLinear", [q, s], [dq], name=f"{node.name}_DQ_Q4", axis=0, block_size=block),
             helper.make_node("MatMul", [node.input[0], dq], list(node.output), name=f"{node.name}_matmul_Q4")])

    return run


def int8_channel(node: onnx.NodeProto, w: np.ndarray) -> Quantized:
    """Symmetric per-output-channel int8 (ModelOpt's quantizer, one block spanning K), a few thousand channels at
    a time: an int8 [K, N] weight and N scales into a DequantizeLinear (axis 1) before the MatMul."""
    from modelopt.onnx.quantization.quant_utils import quant_tensor

    rows, cols = w.shape
    q = np.empty((rows, cols), np.int8)
    scale = np.empty(cols, w.dtype)
    for j in range(0, cols, COLUMNS):
        part, s, _ = quant_tensor(w[:, j:j + COLUMNS], block_size=rows, quantize_axis=0, num_bits=8)
        q[:, j:j + COLUMNS] = part
        scale[j:j + COLUMNS] = s.reshape(-1)
    name = node.input[1]
    matmul = onnx.NodeProto()
    matmul.CopyFrom(node)
    matmul.input[1] = f"{name}_dq"
    return Quantized(
        [(f"{name}_int8", TensorProto.INT8, [rows, cols], q),
         (f"{name}_scale", helper.np_dtype_to_tensor_dtype(scale.dtype), [cols], scale)],
        [helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale"], [f"{name}_dq"], name=f"{node.name}_dq",
                          axis=1), matmul])
