"""`covo-edge build --target rtx`: TensorRT-RTX parses and builds every exported graph on this CPU-only
machine (its ahead-of-time build needs no GPU), fp32 and fp16, with the manifest's profiles; engines.json
records what each engine was built from and for; an unchanged rebuild is skipped. Nothing here runs an
engine (that needs a GPU: tests/test_backends.py, tests/test_cuda.py)."""

import importlib.util
import json
import shutil

import pytest

from conftest import needs

trt = needs("tensorrt_rtx", "engines")

from covo_edge.engines.build import EngineError, build_engine, shrink_profiles, tensorrt
from covo_edge.engines.folder import BuildOptions, build_engines, trtexec_lines
from covo_edge.runtime.cli import main
from covo_edge.runtime.engines_manifest import (
    RTX_PORTABLE,
    EnginesManifest,
    graph_checksum,
)
from covo_edge.runtime.errors import OptionError, OutputError
from covo_edge.runtime.manifest import Manifest, sha256


def test_build_writes_every_engine_and_what_it_was_built_from(tiny_art, rtx_engines):
    check_build(tiny_art, rtx_engines, "fp32")


@pytest.mark.slow
def test_build_writes_every_fp16_engine_and_what_it_was_built_from(tiny_art16, rtx_engines16):
    check_build(tiny_art16, rtx_engines16, "fp16")


def check_build(art, out, precision: str) -> None:
    manifest, index = Manifest.load(art), EnginesManifest.load(out)
    assert set(index.engines) == set(manifest.graphs)
    for g, e in index.engines.items():
        r = e.recipe
        assert (out / e.file).stat().st_size == e.bytes > 1000 and sha256(out / e.file) == e.sha256
        assert r.source == manifest.graphs[g].files and r.source_sha256 == graph_checksum(manifest, g)
        assert (r.builder, r.builder_version, r.target) == ("tensorrt_rtx", trt.__version__, "rtx")
        assert r.portable and r.compute_capabilities == list(RTX_PORTABLE) and r.strongly_typed
        assert r.profiles == manifest.graphs[g].profiles
        assert r.precision == {"fp32": "float32", "fp16": "float16"}[precision]
        assert e.build_seconds > 0 and e.built_at


def test_an_unchanged_rebuild_is_skipped_and_a_changed_graph_rebuilt(tiny_art, rtx_engines, tmp_path):
    out = tmp_path / "engines"
    shutil.copytree(rtx_engines, out)
    before = json.loads((out / "engines.json").read_text())
    report = build_engines(tiny_art, out, BuildOptions("rtx"), progress=False)
    assert report.built == [] and len(report.kept) == 8
    assert json.loads((out / "engines.json").read_text()) == before
    # Other settings for one graph: only that engine is rebuilt, the others stay as they were.
    report = build_engines(tiny_art, out, BuildOptions("rtx", graphs=["audio_adapter"], max_batch=2,
                                                      compute_capabilities=("8.9",)), progress=False)
    assert report.built == ["audio_adapter"] and report.kept == []
    after = json.loads((out / "engines.json").read_text())["engines"]
    assert after["audio_adapter"]["recipe"]["profiles"] == [{"batch": [1, 1, 2]}]
    assert after["audio_adapter"]["recipe"]["compute_capabilities"] == ["8.9"]
    assert not after["audio_adapter"]["recipe"]["portable"]
    assert {g: e for g, e in after.items() if g != "audio_adapter"} == {
        g: e for g, e in before["engines"].items() if g != "audio_adapter"}


def test_build_refuses_bad_options_and_foreign_folders(tiny_art, tmp_path):
    with pytest.raises(OptionError, match="no graph 'nope'"):
        build_engines(tiny_art, tmp_path / "e", BuildOptions("rtx", graphs=["nope"]), progress=False)
    with pytest.raises(OptionError, match="--max-context must be 256 ... 1024"):
        build_engines(tiny_art, tmp_path / "e", BuildOptions("rtx", max_context=4096), progress=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match="was not written by `covo-edge build`"):
        build_engines(tiny_art, foreign, BuildOptions("rtx", graphs=["token2latent_time"]), progress=False)
    assert (foreign / "notes.txt").read_text() == "keep"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="only without classic TensorRT (tensorrt is installed here)")
def test_the_classic_builder_is_named_when_missing(tiny_art, tmp_path):
    with pytest.raises(EngineError, match="tensorrt is not installed .*JetPack"):
        tensorrt("tensorrt")
    assert main(["build", str(tiny_art), "-o", str(tmp_path / "e"), "--target", "tensorrt"]) == 2


@pytest.mark.parametrize("context", [256, 300, 600, 1024])
def test_shrunk_profiles_stay_consistent_at_every_corner(tiny_art, context):
    spec = Manifest.load(tiny_art).graphs["backbone"]
    for p in shrink_profiles(spec.profiles, context, max_batch=1):
        seq, past, total = p["sequence"], p["past_sequence"], p["total_sequence"]
        assert all(seq[i] + past[i] == total[i] for i in range(3))
        assert all(v[0] <= v[1] <= v[2] for v in p.values())
        assert total[2] == context and p["batch"] == [1, 1, 1]
    prefill, decode = shrink_profiles(spec.profiles, context)
    assert prefill["past_sequence"][2] > 0 and decode["past_sequence"][2] == context - 1


def test_max_batch_sets_the_backbones_batch_and_only_cuts_the_others(tiny_art):
    """--max-batch 8: the backbone's profiles take 8 rows (conversations decoding together); the token2wav
    field keeps its guidance pair; --max-batch 1 cuts what can be cut."""
    m = Manifest.load(tiny_art)
    assert all(p["batch"] == [1, 1, 8] for p in shrink_profiles(m.graphs["backbone"].profiles, max_batch=8))
    field = m.graphs["token2latent_field"].profiles
    assert shrink_profiles(field, max_batch=8) == shrink_profiles(field) and all(p["batch"][1] == 2 for p in field)
    assert all(p["batch"][2] == 1 for p in shrink_profiles(m.graphs["audio_encoder"].profiles, max_batch=1))


def test_print_trtexec_gives_each_graph_its_profiles(tiny_art, tmp_path, capsys):
    lines = trtexec_lines(tiny_art, tmp_path / "e", BuildOptions("tensorrt", max_context=512))
    assert len(lines) == 8 and all(line.startswith("trtexec --onnx=") for line in lines)
    backbone = next(line for line in lines if "backbone.onnx" in line)
    assert backbone.count("--minShapes=") == 2 and "--stronglyTyped" in backbone
    assert "attention_mask:2x512" in backbone and "--timingCacheFile=" in backbone
    assert main(["build", str(tiny_art), "-o", str(tmp_path / "e"), "--print-trtexec", "--graphs", "vocoder"]) == 0
    assert capsys.readouterr().out.startswith("tensorrt_rtx --onnx=") and not (tmp_path / "e").exists()


def test_parser_errors_are_reported(tiny_art, tmp_path):
    spec = Manifest.load(tiny_art).graphs["audio_adapter"]
    bad = tmp_path / "audio_adapter.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(EngineError, match="cannot parse audio_adapter.onnx"):
        build_engine(bad, spec, target="rtx")
