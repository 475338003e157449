"""`covo-edge bench-kv`: does a KV cache updated in place pay on ONNX Runtime CPU? A decode step of a
Qwen2.5-0.5B-shaped backbone (the small release's shape, random weights) in three forms, timed
interleaved at given history lengths:

- concat: the exported graph's form, past and new keys/values concatenated into a new present (a copy of
  the whole cache per step); standard ops, what TensorRT builds;
- in_place: com.microsoft GroupQueryAttention over a preallocated cache, past and present bound to one
  buffer (ONNX Runtime only: TensorRT cannot parse the op);
- no_copy: attention over the history without returning a cache (the copy's cost, as a bound).
"""

from __future__ import annotations

import json
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB, MAX_CONTEXT = 24, 896, 14, 2, 64, 4864, 168055, 8192


def _rms(x: str, out: str) -> list:
    return [helper.make_node("Mul", [x, x], [f"{out}_sq"]), helper.make_node("ReduceMean", [f"{out}_sq", "axes"], [f"{out}_ms"]),
            helper.make_node("Add", [f"{out}_ms", "eps"], [f"{out}_e"]), helper.make_node("Sqrt", [f"{out}_e"], [f"{out}_s"]),
            helper.make_node("Div", [x, f"{out}_s"], [out])]


def _block_rest(l: int, attn: str) -> list:
    """o_proj, residual, RMSNorm and the SwiGLU MLP of layer l."""
    return [helper.make_node("MatMul", [attn, f"o{l}"], [f"ao{l}"]), helper.make_node("Add", [f"x{l}", f"ao{l}"], [f"h{l}"]),
            *_rms(f"h{l}", f"n2_{l}"), helper.make_node("MatMul", [f"n2_{l}", f"g{l}"], [f"gg{l}"]),
            helper.make_node("Sigmoid", [f"gg{l}"], [f"sg{l}"]), helper.make_node("Mul", [f"gg{l}", f"sg{l}"], [f"si{l}"]),
            helper.make_node("MatMul", [f"n2_{l}", f"u{l}"], [f"uu{l}"]), helper.make_node("Mul", [f"si{l}", f"uu{l}"], [f"m{l}"]),
            helper.make_node("MatMul", [f"m{l}", f"d{l}"], [f"dd{l}"]), helper.make_node("Add", [f"h{l}", f"dd{l}"], [f"x{l + 1}"])]


def decode_step(form: str, weights: list, layers: int = LAYERS, vocab: int = VOCAB) -> bytes:
    const = [numpy_helper.from_array(np.array([-1], np.int64), "axes"), numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
             numpy_helper.from_array(np.array([1, KV_HEADS, HEADS // KV_HEADS, HEAD_DIM], np.int64), "group"),
             numpy_helper.from_array(np.array([1, 1, HEADS * HEAD_DIM], np.int64), "merge"),
             numpy_helper.from_array(np.array(HEAD_DIM**-0.5, np.float32), "scale")]
    nodes, inputs, outputs = [], [helper.make_tensor_value_info("x0", TP.FLOAT, [1, 1, HIDDEN])], []
    if form == "in_place":
        inputs += [helper.make_tensor_value_info("seqlens_k", TP.INT32, [1]), helper.make_tensor_value_info("total", TP.INT32, [1])]
    for l in range(layers):
        nodes += _rms(f"x{l}", f"n1_{l}") + [helper.make_node("MatMul", [f"n1_{l}", f"{p}{l}"], [f"{p}p{l}"]) for p in "qkv"]
        cache = [MAX_CONTEXT] if form == "in_place" else ["past"]
        for p in "kv":
            inputs.append(helper.make_tensor_value_info(f"past_{p}{l}", TP.FLOAT, [1, KV_HEADS, *cache, HEAD_DIM]))
        if form == "in_place":
            outputs += [helper.make_tensor_value_info(f"present_{p}{l}", TP.FLOAT, [1, KV_HEADS, MAX_CONTEXT, HEAD_DIM]) for p in "kv"]
            nodes.append(helper.make_node("GroupQueryAttention", [f"qp{l}", f"kp{l}", f"vp{l}", f"past_k{l}", f"past_v{l}",
                                                                  "seqlens_k", "total"], [f"attn{l}", f"present_k{l}", f"present_v{l}"],
                                          domain="com.microsoft", num_heads=HEADS, kv_num_heads=KV_HEADS))
        else:
            shape = numpy_helper.from_array(np.array([1, 1, KV_HEADS, HEAD_DIM], np.int64), f"kvs{l}")
            const.append(shape)
            for p in "kv":
                nodes += [helper.make_node("Reshape", [f"{p}p{l}", f"kvs{l}"], [f"{p}r{l}"]),
                          helper.make_node("Transpose", [f"{p}r{l}"], [f"{p}t{l}"], perm=[0, 2, 1, 3])]
                if form == "concat":
                    nodes.append(helper.make_node("Concat", [f"past_{p}{l}", f"{p}t{l}"], [f"all_{p}{l}"], axis=2))
                    outputs.append(helper.make_tensor_value_info(f"all_{p}{l}", TP.FLOAT, [1, KV_HEADS, "total", HEAD_DIM]))
                else:
                    nodes.append(helper.make_node("Identity", [f"past_{p}{l}"], [f"all_{p}{l}"]))
            nodes += [helper.make_node("Reshape", [f"qp{l}", "group"], [f"qg{l}"]),
                      helper.make_node("Transpose", [f"all_k{l}"], [f"kT{l}"], perm=[0, 1, 3, 2]),
                      helper.make_node("MatMul", [f"qg{l}", f"kT{l}"], [f"sc{l}"]), helper.make_node("Mul", [f"sc{l}", "scale"], [f"ss{l}"]),
                      helper.make_node("Softmax", [f"ss{l}"], [f"pr{l}"], axis=-1),
                      helper.make_node("MatMul", [f"pr{l}", f"all_v{l}"], [f"av{l}"]),
                      helper.make_node("Reshape", [f"av{l}", "merge"], [f"attn{l}"])]
        nodes += _block_rest(l, f"attn{l}")
    nodes += _rms(f"x{layers}", "final") + [helper.make_node("MatMul", ["final", "head"], ["logits"])]
    outputs.insert(0, helper.make_tensor_value_info("logits", TP.FLOAT, [1, 1, vocab]))
    graph = helper.make_graph(nodes, form, inputs, outputs, weights + const)
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid("com.microsoft", 1)] if form == "in_place" else [])
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def measure(histories: list[int], rounds: int = 20, layers: int = LAYERS, vocab: int = VOCAB) -> dict:
    """Median step time of each form per history length; fewer `layers` or a smaller `vocab` (the LM head)
    make a quick, smaller check of the same three forms."""
    rng = np.random.default_rng(0)
    shapes = {"q": (HIDDEN, HEADS * HEAD_DIM), "k": (HIDDEN, KV_HEADS * HEAD_DIM), "v": (HIDDEN, KV_HEADS * HEAD_DIM),
              "o": (HEADS * HEAD_DIM, HIDDEN), "g": (HIDDEN, FFN), "u": (HIDDEN, FFN), "d": (FFN, HIDDEN)}
    weights = [numpy_helper.from_array(0.02 * rng.standard_normal(s, dtype=np.float32), f"{n}{l}")
               for l in range(layers) for n, s in shapes.items()]
    weights.append(numpy_helper.from_array(0.02 * rng.standard_normal((HIDDEN, vocab), dtype=np.float32), "head"))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the in-place form leaves the other forms' constants unused
    sessions = {form: ort.InferenceSession(decode_step(form, weights, layers, vocab), options, providers=["CPUExecutionProvider"])
                for form in ("concat", "in_place", "no_copy")}
    x = rng.standard_normal((1, 1, HIDDEN), dtype=np.float32)
    results = {}
    for history in histories:
        past = {f"past_{p}{l}": rng.standard_normal((1, KV_HEADS, history, HEAD_DIM), dtype=np.float32)
                for l in range(layers) for p in "kv"}
        buffers = {}
        for name, value in past.items():
            full = np.zeros((1, KV_HEADS, MAX_CONTEXT, HEAD_DIM), np.float32)
            full[:, :, :history] = value
            buffers[name] = ort.OrtValue.ortvalue_from_numpy(full)

        def run(form: str) -> None:
            s = sessions[form]
            bind = s.io_binding()
            bind.bind_cpu_input("x0", x)
            if form == "in_place":
                bind.bind_cpu_input("seqlens_k", np.array([history], np.int32))
                bind.bind_cpu_input("total", np.array([history + 1], np.int32))
                for name, buf in buffers.items():
                    bind.bind_ortvalue_input(name, buf)
                    bind.bind_ortvalue_output(name.replace("past", "present"), buf)
                bind.bind_output("logits", "cpu")
            else:
                for name, value in past.items():
                    bind.bind_cpu_input(name, value)
                for o in s.get_outputs():
                    bind.bind_output(o.name, "cpu")
            s.run_with_iobinding(bind)

        times = {form: [] for form in sessions}
        for _ in range(rounds):
            for form in sessions:
                t0 = time.perf_counter()
                run(form)
                times[form].append(time.perf_counter() - t0)
        ms = {form: 1000 * float(np.median(t[min(3, rounds - 1):])) for form, t in times.items()}
        results[history] = {**{f"{form}_ms": v for form, v in ms.items()},
                            "in_place_saves": (ms["concat"] - ms["in_place"]) / ms["concat"],
                            "copy_share": (ms["concat"] - ms["no_copy"]) / ms["concat"]}
    return results


def run_bench_kv(histories: list[int], rounds: int = 20, layers: int = LAYERS, vocab: int = VOCAB) -> None:
    print(json.dumps(measure(histories, rounds, layers, vocab), indent=2))
