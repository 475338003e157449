"""The real model's size: `make-tiny --size wide` has the released shapes, and export and quantize hold one
weight at a time instead of the model (the 7B's fp16 backbone alone is 14.3 GB). Anchored on the release's
state-dict manifest, safetensors' own reader, an export from weights held in memory, ONNX Runtime's int4
quantizer and ModelOpt's per-channel int8."""

import tracemalloc
import weakref

import numpy as np
import pytest

from conftest import needs, shared_dir

torch = needs("torch", "export")
onnx = needs("onnx", "export")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

MANIFEST = "reference/covo_audio_state_dict_manifest.json"


def _release_manifest() -> dict:
    import json

    d = shared_dir()
    if d is None or not (d / MANIFEST).is_file():
        pytest.skip(f"needs ../shared: {MANIFEST} (shipped beside the clone in CI, not in a fresh clone)")
    return json.loads((d / MANIFEST).read_text())


def test_wide_has_every_released_shape_with_two_backbone_layers():
    """Every key the wide release has is a released key of the released shape; it lacks only layers 2-27."""
    from covo_edge.export.config import Token2WavConfig
    from covo_edge.export.release import build_covo, release_key_shapes, weight_norm_keys
    from covo_edge.export.tiny import SIZES, covo_config
    from covo_edge.export.token2wav import ReferenceToken2Wav

    manifest = _release_manifest()
    wide = SIZES["wide"]
    ours = {k: tuple(v.shape) for k, v in build_covo(covo_config(wide), "meta").state_dict().items()}
    release = {k["key"]: tuple(k["shape"]) for k in manifest["covo_audio"]["keys"]}
    assert {k: release[k] for k in ours} == ours
    missing = {k.split(".")[3] for k in set(release) - set(ours)}
    assert missing == {str(i) for i in range(2, 28)}
    assert all(k.startswith("llm.model.layers.") for k in set(release) - set(ours))
    config = covo_config(wide).to_dict()
    released = manifest["configs"]["covo_audio_config_to_dict"]
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
                "rms_norm_eps", "tie_word_embeddings"):
        assert config["llm_config"][key] == released["llm_config"][key], key
    for key in ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins"):
        assert config["encoder_config"][key] == released["encoder_config"][key], key

    t2w = Token2WavConfig(dit=wide.dit, vocoder=wide.vocoder)
    assert t2w == Token2WavConfig.from_dict(manifest["configs"]["token2wav_config_json"])
    with torch.device("meta"):
        model = ReferenceToken2Wav(t2w)
    shapes = release_key_shapes({k: v.shape for k, v in model.state_dict().items()}, weight_norm_keys(model))
    assert shapes == {k["key"]: tuple(k["shape"]) for k in manifest["token2wav"]["keys"]}


def test_release_shards_read_back_with_safetensors(tiny_dir):
    """make-tiny writes its shards tensor by tensor with its own writer: safetensors reads every one back as
    the values the generator makes for that name, and the index names every key's shard."""
    import json

    from safetensors import safe_open

    from covo_edge.export.release import build_covo
    from covo_edge.export.tiny import SIZES, covo_config, random_like

    index = json.loads((tiny_dir / "model.safetensors.index.json").read_text())["weight_map"]
    like = build_covo(covo_config(SIZES["tiny"]), "meta").state_dict()
    assert set(index) == set(like) and len(set(index.values())) >= 2
    for shard in sorted(set(index.values())):
        with safe_open(str(tiny_dir / shard), "pt") as f:
            keys = list(f.keys())
            assert set(keys) == {k for k in like if index[k] == shard}
            for k in keys[:: max(1, len(keys) // 6)]:
                assert torch.equal(f.get_tensor(k), random_like(k, like[k], 0).to(torch.bfloat16)), k


def test_export_reads_one_weight_at_a_time_and_writes_what_an_export_from_memory_writes(tiny_dir, tmp_path):
    """The encoder, exported from placeholders: each big weight is read from the checkpoint once, no two are held
    at once, none is held by the model; the graph and every initializer equal an export from loaded weights."""
    from covo_edge.export.exporter import FOLD_LIMIT, export_graph
    from covo_edge.export.graphs import audio_encoder
    from covo_edge.export.release import LazyWeights, Release, load_covo

    release = Release.open(tiny_dir)
    lazy = LazyWeights(torch.float32, FOLD_LIMIT)
    model = load_covo(release, torch.float32, lazy)
    big = [p for p in model.encoder.parameters() if p.numel() > FOLD_LIMIT]
    assert len(big) >= 4 and all(lazy.source(p) is not None and p.untyped_storage().nbytes() == 4 for p in big)

    live, reads, most = set(), [], [0]
    read = lazy.read

    def counted(stored, perm=None):
        out = read(stored, perm)
        key = id(out)
        live.add(key)
        most[0] = max(most[0], len(live))
        weakref.finalize(out, live.discard, key)
        reads.append(stored)
        return out

    lazy.read = counted
    (tmp_path / "lazy").mkdir()
    export_graph(audio_encoder.graph(model), tmp_path / "lazy", lazy)
    assert len(reads) == len(big) and most[0] == 1

    (tmp_path / "memory").mkdir()
    export_graph(audio_encoder.graph(load_covo(release, torch.float32)), tmp_path / "memory")
    a, b = (onnx.load(str(tmp_path / d / "audio_encoder.onnx")) for d in ("lazy", "memory"))
    assert [(n.op_type, list(n.input)) for n in a.graph.node] == [(n.op_type, list(n.input)) for n in b.graph.node]
    ia = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    ib = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert ia.keys() == ib.keys() and all(np.array_equal(ia[k], ib[k]) for k in ia)


def _matmul_chain(path, layers: int, k: int, n: int):
    """x -> MatMul(w_i) -> Relu -> ... with `layers` [k, n] / [n, k] weights in one external data file."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        shape = (k, n) if i % 2 == 0 else (n, k)
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    out = n if layers % 2 else k
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data")
    return model


@pytest.mark.parametrize("bits", [4, 8])
def test_quantize_holds_one_matrix_at_a_time_and_writes_what_the_libraries_write(tmp_path, bits):
    """Twelve 1 MB matrices quantized: Python's peak allocation stays under four matrices (a whole-model
    quantizer holds the source and the result, 12 MB and more); int4 equals ONNX Runtime's own quantizer node for
    node and byte for byte, int8 equals ModelOpt's quantizer applied to each whole matrix; ONNX Runtime runs it."""
    import onnxruntime as ort

    needs("modelopt", "calibration")
    from modelopt.onnx.quantization.quant_utils import quant_tensor  # imported before memory is traced

    from covo_edge.calibration.weight_stream import WeightStream, int4_block, int8_channel

    source = tmp_path / "src" / "chain.onnx"
    source.parent.mkdir()
    layers, k, n = 12, 256, 1024
    _matmul_chain(source, layers, k, n)
    fn = int4_block(32) if bits == 4 else int8_channel
    (tmp_path / "out").mkdir()
    tracemalloc.start()
    stream = WeightStream(source, tmp_path / "out", "chain")
    stream.rewrite({f"mm{i}": fn for i in range(layers)}, 21 if bits == 4 else 13)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    matrix = k * n * 4
    # one matrix, its quantized copy and the quantizer's temporaries, far below the twelve of the model
    assert peak < 4 * matrix, f"peak {peak / 2**20:.1f} MiB for {layers} matrices of {matrix / 2**20:.0f} MiB"

    got = onnx.load(str(tmp_path / "out" / "chain.onnx"))
    if bits == 4:
        import logging

        from onnxruntime.quantization import QuantFormat
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
        q = MatMulNBitsQuantizer(onnx.load(str(source)), bits=4, block_size=32, is_symmetric=True,
                                 quant_format=QuantFormat.QDQ, op_types_to_quantize=("MatMul",))
        q.process()
        want = q.model.model

        def nodes(m):
            return [(x.op_type, x.name, list(x.input), list(x.output),
                     sorted((a.name, helper.get_attribute_value(a)) for a in x.attribute)) for x in m.graph.node]

        assert nodes(got) == nodes(want)
        ig = {t.name: (t.data_type, numpy_helper.to_array(t).tobytes()) for t in got.graph.initializer}
        iw = {t.name: (t.data_type, numpy_helper.to_array(t).tobytes()) for t in want.graph.initializer}
        assert ig == iw
    else:
        src = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(source)).graph.initializer}
        ig = {t.name: numpy_helper.to_array(t) for t in got.graph.initializer}
        for name, w in src.items():
            q, scale, _ = quant_tensor(w, block_size=w.shape[0], quantize_axis=0, num_bits=8)
            assert np.array_equal(ig[f"{name}_int8"], q.astype(np.int8))
            assert np.array_equal(ig[f"{name}_scale"], scale.reshape(-1).astype(np.float32))
    x = np.random.default_rng(1).standard_normal((1, k)).astype(np.float32)
    run = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for p in (source, tmp_path / "out" / "chain.onnx")]
    rel = np.linalg.norm(run[1] - run[0]) / np.linalg.norm(run[0])
    assert 0 < rel < (0.5 if bits == 4 else 0.05)  # twelve layers of random weights compound the error


def test_make_tiny_layers_sets_the_backbone_depth_only(tmp_path):
    """--layers N: a release of the size's width with N backbone layers (two depths give per-layer costs)."""
    import json

    from covo_edge.export.tiny import make_tiny

    out = make_tiny(tmp_path / "one", size="tiny", layers=1, progress=lambda *_: None)
    config = json.loads((out / "config.json").read_text())
    assert config["llm_config"]["num_hidden_layers"] == 1 and config["llm_config"]["hidden_size"] == 64
    keys = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert any(k.startswith("llm.model.layers.0.") for k in keys)
    assert not any(k.startswith("llm.model.layers.1.") for k in keys)
