"""`covo-edge quantize`: every recipe on the tiny model writes artifacts the runtime loads and runs, a
manifest that says what was done and where it runs, and an accuracy report whose numbers are measured
against the fp32 source; ONNX Runtime runs the quantized weights in its MatMulNBits kernel."""

import json
from collections import Counter

import numpy as np
import pytest

from conftest import needs

onnx = needs("onnx", "export")
needs("modelopt", "calibration")

from covo_edge.calibration.recipes import RECIPES, lm_head_node  # noqa: E402
from covo_edge.runtime import Assistant, Debug  # noqa: E402
from covo_edge.runtime.cli import main  # noqa: E402
from covo_edge.runtime.manifest import SPEECH_GRAPHS, Manifest  # noqa: E402
from covo_edge.runtime.synthetic import interleaved_reply, synthetic_utterance  # noqa: E402

WEIGHT_TYPES = {"int4-awq": onnx.TensorProto.INT4, "int4-rtn": onnx.TensorProto.INT4,
                "int8-weights": onnx.TensorProto.INT8, "int8-w8a8": onnx.TensorProto.INT8,
                "fp8": onnx.TensorProto.FLOAT8E4M3FN}


def test_list_prints_one_recipe_per_line(capsys):
    assert main(["quantize", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == list(RECIPES)
    assert all(len(line.split("\t")[1]) > 20 for line in lines)


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_writes_artifacts_manifest_and_report(tiny_quantized, tiny_art, name):
    art = tiny_quantized(name)
    m, src = Manifest.load(art), Manifest.load(tiny_art)
    assert not m.file_problems(art, checksums=True)
    p = m.precision
    assert p.recipe == name and set(p.graphs) == set(RECIPES[name].graphs)
    assert "LM head int8" in p.graphs["backbone"] and "tensorrt-rtx" in p.targets and "onnxruntime" in p.versions
    assert ("synthetic" in p.calibration) == RECIPES[name].calibrated
    for g in SPEECH_GRAPHS + ("embed_tokens", "audio_adapter"):
        assert all(m.files[f].sha256 == src.files[f].sha256 for f in m.graphs[g].files), g
    report = json.loads((art / p.report).read_text())
    tf = report["backbone_teacher_forced"]["both_turns"]
    assert tf["steps"] == 40 and tf["audio_steps"] == 30 and 0 <= tf["top1_agreement"] <= 1
    assert tf["kl_nats"]["min"] >= 0 and tf["logit_rel_error"]["mean"] > 0  # quantized, not a copy
    assert report["token2wav"]["changed_files"] == []
    assert set(report["graphs"]) == set(RECIPES[name].graphs)


def test_report_ranks_int8_weights_above_int4(tiny_quantized):
    """Measured against fp32: int8 weights lose far less than int4 (random weights exaggerate both)."""
    def teacher(name):
        art = tiny_quantized(name)
        return json.loads((art / "precision_report.json").read_text())["backbone_teacher_forced"]["both_turns"]

    int8, int4 = teacher("int8-weights"), teacher("int4-rtn")
    assert int8["logit_rel_error"]["mean"] < 0.1 and int8["top1_agreement"] > 0.7
    assert int4["logit_rel_error"]["mean"] > 2 * int8["logit_rel_error"]["mean"]
    assert int8["kl_nats"]["mean"] < int4["kl_nats"]["mean"]


@pytest.mark.parametrize("name", list(RECIPES))
def test_quantized_graphs_hold_standard_ops_and_low_precision_weights(tiny_quantized, name):
    art = tiny_quantized(name)
    m = Manifest.load(art)
    for g in RECIPES[name].graphs:
        model = onnx.load(str(art / m.graphs[g].file))
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, "TensorRT cannot parse contrib ops"
        types = Counter(t.data_type for t in model.graph.initializer)
        assert types[WEIGHT_TYPES[name]] > 0, g
        if g == "backbone":  # the LM head at its own precision: int8 weights, the default
            head = [t for t in model.graph.initializer if len(t.dims) == 2 and t.dims[1] == m.llm.vocab_size]
            assert [t.data_type for t in head] == [onnx.TensorProto.INT8]
            assert lm_head_node(model, m.llm.vocab_size) is None  # no float LM head left


def test_onnxruntime_runs_weight_only_recipes_in_matmulnbits(tiny_quantized, tmp_path):
    """The CPU fast path: ORT fuses DequantizeLinear + MatMul into MatMulNBits at accuracy level 4."""
    import onnxruntime as ort

    from covo_edge.runtime.backends.onnxruntime import ACCURACY_LEVEL

    for name, bits in (("int4-rtn", 4), ("int8-weights", 8)):
        art = tiny_quantized(name)
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(ACCURACY_LEVEL))
        ort.InferenceSession(str(art / "backbone.onnx"), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(str(tmp_path / f"{name}.onnx"), load_external_data=False).graph.node
        fused = [{a.name: a.i for a in n.attribute} for n in nodes if n.op_type == "MatMulNBits"]
        assert len(fused) == 7 * Manifest.load(art).llm.num_layers + 1  # q k v o gate up down, and the LM head
        assert ACCURACY_LEVEL == 4 and all(f["accuracy_level"] == 4 and f["bits"] in (bits, 8) for f in fused)
        assert not [n for n in nodes if n.op_type == "DequantizeLinear"]


# Worst mean relative logit error of a quantized reply against the fp32 reply, teacher-forced (README).
REPLY_TOLERANCE = {"int8-weights": 0.06, "int8-w8a8": 0.25, "fp8": 0.3, "int4-rtn": 0.45, "int4-awq": 0.45}


@pytest.mark.parametrize("name", list(RECIPES))
def test_quantized_replies_stay_within_the_recipes_tolerance_of_fp32(tiny_quantized, tiny_art, name):
    """The same spoken turn, tokens forced, from the quantized and the fp32 artifacts: per-step logits within
    the recipe's stated tolerance, and (token2wav untouched by every recipe) the very same speech."""
    forced = interleaved_reply(24, 151671, 16384, seed=3)
    wav = synthetic_utterance(2.0, 16000, seed=4)
    replies, logits = [], []
    for art in (tiny_art, tiny_quantized(name)):
        dump = {}
        replies.append(Assistant.load(art).reply(wav, 16000, seed=0, debug=Debug(force_tokens=forced, dump=dump,
                                                                               step_logits="all")))
        logits.append(dump["step_logits"])
    ref, got = logits
    rel = np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    print(f"{name}: mean relative logit error {rel.mean():.4f} (max {rel.max():.4f})")
    assert 0 < rel.mean() <= REPLY_TOLERANCE[name]
    assert np.array_equal(replies[0].audio, replies[1].audio)


@pytest.mark.slow
def test_calibration_from_a_folder_of_recordings(tiny_art, tiny_quantized, tmp_path):
    import soundfile as sf

    from covo_edge.calibration.quantize import quantize

    folder = tmp_path / "recordings"
    folder.mkdir()
    for i, rate in enumerate((16000, 44100, 24000)):
        wav = synthetic_utterance(2.0 + i, 16000, seed=10 + i)
        sf.write(folder / f"q{i}.flac" if i == 1 else folder / f"q{i}.wav",
                 np.interp(np.arange(int(len(wav) * rate / 16000)) * 16000 / rate, np.arange(len(wav)), wav), rate)
    synthetic = json.loads((tiny_quantized("int8-w8a8") / "precision_report.json").read_text())
    assert "synthetic" in synthetic["calibration"]  # without a folder, the built-in fallback
    report = quantize(tiny_art, tmp_path / "out2", "int8-w8a8", calibration_dir=folder, count=2, decode_steps=3,
                      report_steps=20, quiet=True)
    assert "recordings from recordings/ (q0.wav, q1.flac, q2.wav): 3 utterances" in report["calibration"]
    assert "decode steps recorded" in report["calibration"]
    assert "also used to calibrate" in report["report_inputs"] and report["inputs"] == ["q0.wav", "q1.flac"]


@pytest.mark.parametrize("args, message", [
    (["--recipe", "int3"], "--recipe must be one of int4-awq"),
    (["--calibration-dir", "/nonexistent"], "is not a directory"),
])
def test_bad_options_are_one_line_errors(tiny_art, tmp_path, capsys, args, message):
    assert main(["quantize", str(tiny_art), "-o", str(tmp_path / "q"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "q").exists()


def test_quantized_artifacts_are_not_quantized_again(tiny_quantized, tmp_path, capsys):
    assert main(["quantize", str(tiny_quantized("int4-rtn")), "-o", str(tmp_path / "q")]) == 2
    assert "is already quantized (int4-rtn)" in capsys.readouterr().err


JETPACK_6 = "tensorrt-10.3 (JetPack 6)"


@pytest.mark.parametrize("name", list(RECIPES))
def test_jetpack_6_support_is_what_the_manifest_says(tiny_quantized, name):
    """Each recipe's graphs against TensorRT 10.3's operator table: where the manifest says JetPack 6 takes
    the recipe, every node passes; where it says not, the table check finds exactly the reason it gives."""
    from test_tensorrt_ops import problems_10_3

    art = tiny_quantized(name)
    says = Manifest.load(art).precision.targets[JETPACK_6]
    problems = problems_10_3(art, RECIPES[name].graphs)
    if says == "yes":
        assert not problems, "\n".join(problems)
    elif "opset 21" in says:
        assert problems and all("opset ai.onnx 21" in p for p in problems), problems
    else:
        assert "fp8" in says and not problems  # the parser takes fp8 Q/DQ; Orin's GPU has no fp8 kernels


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
def test_tensorrt_rtx_builds_every_quantized_graph(tiny_quantized, tmp_path, name):
    needs("tensorrt_rtx", "engines")
    from covo_edge.engines.folder import BuildOptions, build_engines
    from covo_edge.runtime.engines_manifest import EnginesManifest

    art = tiny_quantized(name)
    graphs = list(RECIPES[name].graphs)
    build_engines(art, tmp_path / "engines", BuildOptions("rtx", graphs=graphs), progress=False)
    index, manifest = EnginesManifest.load(tmp_path / "engines"), Manifest.load(art)
    assert set(index.engines) == set(graphs)
    for g, e in index.engines.items():
        assert e.bytes > 1000 and e.recipe.precision == manifest.graph_precision(g)


@pytest.mark.slow
def test_a_terminated_quantize_leaves_nothing_behind(tiny_art, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "q"
    run = subprocess.Popen([sys.executable, "-m", "covo_edge.runtime.cli", "quantize", str(tiny_art), "-o", str(out),
                            "--recipe", "int8-w8a8"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".q.*")) and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.05)
        assert list(tmp_path.glob(".q.*")), "the staged folder never appeared"
        run.send_signal(signal.SIGTERM)
        assert run.wait(120) == 130
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert list(tmp_path.iterdir()) == []


def test_no_report_quantizes_the_same_weights_and_says_the_report_was_skipped(tiny_art, tiny_quantized, tmp_path, capsys):
    """--no-report: the same graphs as with the report (the quantizing does not depend on it), a report file
    that says it was skipped and why, and artifacts that pass `check`."""
    out = tmp_path / "q"
    assert main(["quantize", str(tiny_art), "-o", str(out), "--recipe", "int4-rtn", "--no-report"]) == 0
    assert "accuracy: the accuracy report was not measured (--no-report)" in capsys.readouterr().out
    report = json.loads((out / "precision_report.json").read_text())
    assert "skipped" in report and "backbone_teacher_forced" not in report
    m, full = Manifest.load(out), Manifest.load(tiny_quantized("int4-rtn"))
    assert not m.file_problems(out, checksums=True)
    assert {f: m.files[f].sha256 for f in m.graphs["backbone"].files} == \
        {f: full.files[f].sha256 for f in full.graphs["backbone"].files}
    assert main(["check", str(out)]) == 0


def test_the_report_is_skipped_where_the_machine_lacks_its_memory_unless_forced(tiny_art, tmp_path, capsys,
                                                                                 monkeypatch):
    """The report runs the source's text graphs on ONNX Runtime CPU in fp32: 1.4 x their fp32 bytes. With less
    available it is skipped, saying what it needs and how to get it; --force-report runs it anyway."""
    from covo_edge.calibration import quantize as q

    m = Manifest.load(tiny_art)
    text = sum((tiny_art / f).stat().st_size for g in ("audio_encoder", "audio_adapter", "backbone")
               for f in m.graphs[g].files)
    assert q.report_memory_gb(tiny_art, m) == pytest.approx(1.4 * text / 1e9)
    monkeypatch.setattr(q, "available_gb", lambda: 1e-6)
    out = tmp_path / "q"
    assert main(["quantize", str(tiny_art), "-o", str(out), "--recipe", "int4-rtn"]) == 0
    err = capsys.readouterr().err
    assert "skipping the accuracy report" in err and "--force-report" in err
    report = json.loads((out / "precision_report.json").read_text())
    assert "needs ~" in report["skipped"] and "backbone_teacher_forced" not in report
    forced = tmp_path / "f"
    assert main(["quantize", str(tiny_art), "-o", str(forced), "--recipe", "int4-rtn", "--force-report"]) == 0
    assert "backbone_teacher_forced" in json.loads((forced / "precision_report.json").read_text())
