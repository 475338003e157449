"""TensorRT accepts every exported graph: TensorRT-RTX parses and builds each one on this CPU-only
machine (its ahead-of-time build needs no GPU), with the optimization profile from the manifest."""

import pytest

pytest.importorskip("tensorrt_rtx", reason="needs tensorrt-rtx-cu12 (the dev extra installs it)")

from covo_edge.engines.build import EngineError, build_engine  # noqa: E402
from covo_edge.runtime.manifest import Manifest  # noqa: E402

GRAPHS = ["audio_encoder", "audio_adapter", "embed_tokens", "backbone", "token2latent_codes", "token2latent_time",
          "token2latent_field", "vocoder"]


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_rtx_builds_every_graph(request, name, precision):
    art = request.getfixturevalue("tiny_art" if precision == "fp32" else "tiny_art16")
    spec = Manifest.load(art).graphs[name]
    result = build_engine(art / spec.file, spec, flavour="rtx")
    assert len(result.engine) > 1000
    if result.warnings:
        print(f"{name} {precision} builder warnings: {result.warnings}")


def test_parser_errors_are_reported(tiny_art, tmp_path):
    spec = Manifest.load(tiny_art).graphs["audio_adapter"]
    bad = tmp_path / "audio_adapter.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(EngineError, match="cannot parse audio_adapter.onnx"):
        build_engine(bad, spec, flavour="rtx")
