"""The TensorRT backend's logic that needs no GPU: which profile a call takes, and the refusal of engines
that do not fit this machine or these artifacts (one line naming what differs and the build command that
fixes it). Nothing here runs an engine: the placeholder engine files are never deserialized."""

import pytest
from covo_edge.runtime.backends import load_backend
from covo_edge.runtime.backends.cuda import Gpu, probe
from covo_edge.runtime.backends.tensorrt import TensorRTBackend, choose_profile
from covo_edge.runtime.engines_manifest import compatibility_problem
from covo_edge.runtime.errors import ArtifactsError, DeviceError, OptionError
from covo_edge.runtime.manifest import Manifest


def _ranges(spec):
    return [{n: (tuple(lo), tuple(hi)) for n, (lo, _, hi) in spec.profile_shapes(k).items()}
            for k in range(len(spec.profiles))]


def _shapes(spec, dims):
    from covo_edge.runtime.manifest import dim_value

    return {t.name: tuple(dim_value(d, dims) for d in t.shape) for t in spec.inputs}


def test_prefill_and_decode_take_their_profiles(tiny_art):
    spec = Manifest.load(tiny_art).graphs["backbone"]
    ranges = _ranges(spec)
    prefill = _shapes(spec, {"batch": 1, "sequence": 64, "past_sequence": 300, "total_sequence": 364})
    first = _shapes(spec, {"batch": 1, "sequence": 300, "past_sequence": 0, "total_sequence": 300})
    step = _shapes(spec, {"batch": 1, "sequence": 1, "past_sequence": 20, "total_sequence": 21})  # fits both
    late = _shapes(spec, {"batch": 1, "sequence": 1, "past_sequence": 900, "total_sequence": 901})
    assert [choose_profile(ranges, s) for s in (prefill, first, step, late)] == [0, 0, 1, 1]
    too_long = _shapes(spec, {"batch": 1, "sequence": 600, "past_sequence": 0, "total_sequence": 600})
    too_wide = _shapes(spec, {"batch": 3, "sequence": 1, "past_sequence": 1, "total_sequence": 2})
    assert choose_profile(ranges, too_long) is None and choose_profile(ranges, too_wide) is None


def test_compatible_engines_pass(tiny_art, engines_index):
    folder, index = engines_index(tiny_art)
    manifest = Manifest.load(tiny_art)
    assert compatibility_problem(folder, index, tiny_art, manifest, list(manifest.graphs), "tensorrt_rtx",
                                 "1.7.1.116", "8.9") is None


@pytest.mark.parametrize("case, builder, version, cc, expected", [
    ("version", "tensorrt_rtx", "1.8.0.1", "8.9", r"built by tensorrt_rtx 1\.7\.1\.116, this machine has 1\.8\.0\.1"),
    ("missing module", "tensorrt_rtx", None, "8.9", "which is not installed here"),
    ("other module", "tensorrt", "10.3.0", "8.7", "built by tensorrt_rtx 1.7.1.116, which is not installed"),
    ("hopper", "tensorrt_rtx", "1.7.1.116", "9.0", r"this GPU is 9\.0: use `--target tensorrt`"),
    ("orin", "tensorrt_rtx", "1.7.1.116", "8.7", r"compute capability 8\.6, 8\.9, 12\.0, 12\.1, this GPU is 8\.7"),
])
def test_mismatched_engines_are_refused_with_the_fix(tiny_art, engines_index, case, builder, version, cc, expected):
    folder, index = engines_index(tiny_art, ["backbone"])
    problem = compatibility_problem(folder, index, tiny_art, Manifest.load(tiny_art), ["backbone"], builder, version, cc)
    assert problem is not None and "\n" not in problem
    assert f"covo-edge build {tiny_art}" in problem
    import re

    assert re.search(expected, problem), problem


def test_engines_of_another_graph_or_damaged_files_are_refused(tiny_art, engines_index):
    folder, index = engines_index(tiny_art, ["backbone", "vocoder"])
    manifest = Manifest.load(tiny_art)

    def problem(graphs):
        return compatibility_problem(folder, index, tiny_art, manifest, graphs, "tensorrt_rtx", "1.7.1.116", "12.0")

    assert "has no engine for the embed_tokens graph" in problem(["embed_tokens"])
    manifest.files["backbone.onnx"].sha256 = "f" * 64  # re-exported or quantized since the build
    assert "built from another backbone graph" in problem(["backbone"])
    (folder / "vocoder.engine").write_bytes(b"short")
    assert "has 5 bytes, engines.json says 11" in problem(["vocoder"])
    (folder / "vocoder.engine").unlink()
    assert "vocoder.engine is missing" in problem(["vocoder"])


def test_backend_options_are_checked(tiny_art, engines_index):
    manifest = Manifest.load(tiny_art)
    with pytest.raises(OptionError, match="needs engines"):
        load_backend("tensorrt", tiny_art, manifest, "cpu")
    with pytest.raises(OptionError, match="engines are for the tensorrt backend"):
        load_backend("onnxruntime", tiny_art, manifest, "cpu", engines=tiny_art)
    with pytest.raises(ArtifactsError, match="has no engines.json"):
        load_backend("tensorrt", tiny_art, manifest, "cpu", engines=tiny_art)


@pytest.mark.skipif(isinstance(probe(), Gpu), reason="only without a GPU (a CUDA GPU is present)")
def test_without_a_gpu_the_backend_refuses_before_touching_tensorrt(tiny_art, engines_index):
    folder, _ = engines_index(tiny_art)
    with pytest.raises(DeviceError, match="needs a CUDA GPU: .*use --backend onnxruntime"):
        TensorRTBackend(tiny_art, Manifest.load(tiny_art), folder)
