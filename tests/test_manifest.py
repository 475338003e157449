"""The artifacts contract: typed manifest sections, graphs checked against the manifest at load (swapped,
foreign or stale files refused), sizes at load, checksums and a run of every graph in `covo-edge check`."""

import json
import re
import shutil

import numpy as np
import pytest

from conftest import needs

from covo_edge.runtime import ArtifactsError, Assistant
from covo_edge.runtime.manifest import GRAPH_IO, LLMSpec, Manifest, SamplingSpec, TensorSpec, dim_value, sha256

onnx = needs("onnx", "export")


@pytest.fixture
def art(tiny_art, tmp_path):
    d = tmp_path / "art"
    shutil.copytree(tiny_art, d)
    return d


def edit_manifest(art, change) -> None:
    path = art / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def resize(art, *names) -> None:
    """Record the files' current sizes, as a careless hand edit would: only the graph check can catch them."""
    def change(m):
        for n in names:
            m["files"][n]["bytes"] = (art / n).stat().st_size
    edit_manifest(art, change)


def test_sections_are_typed_and_round_trip(tiny_art, tmp_path):
    m = Manifest.load(tiny_art)
    assert isinstance(m.llm, LLMSpec) and isinstance(m.sampling, SamplingSpec)
    assert isinstance(m.graphs["backbone"].inputs[0], TensorSpec)
    assert m.llm.past_names[:2] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert [t.name for t in m.graphs["backbone"].inputs] == [*GRAPH_IO["backbone"][0], *m.llm.past_names]
    assert m.num_audio_codes == 16384 and m.tokenizer.audio_code_offset == 151671
    assert set(m.files) >= {"tokenizer.json", "backbone.onnx", "backbone.onnx.data", "voices/prompt/prompt_token.npy"}
    m.save(tmp_path)
    assert Manifest.load(tmp_path, check_sizes=False) == m


def test_dims_of_named_and_derived_axes():
    dims = {"frames": 7, "past_sequence": 5, "sequence": 2}
    assert [dim_value(d, dims) for d in (3, "frames", "240*frames", "past_sequence + sequence")] == [3, 7, 1680, 7]


def test_swapped_graph_files_are_refused(art):
    (art / "audio_encoder.onnx").rename(art / "tmp.onnx")
    (art / "audio_adapter.onnx").rename(art / "audio_encoder.onnx")
    (art / "tmp.onnx").rename(art / "audio_adapter.onnx")
    resize(art, "audio_encoder.onnx", "audio_adapter.onnx")
    # Graphs load largest first: whichever of the two is opened first is the one named.
    with pytest.raises(ArtifactsError, match=r"audio_encoder\.onnx does not match its manifest entry \(its inputs are "
                                             r"\[hidden\], the manifest lists \[mel\]\): the file was swapped|"
                                             r"audio_adapter\.onnx does not match its manifest entry \(its inputs are "
                                             r"\[mel\], the manifest lists \[hidden\]\): the file was swapped"):
        Assistant.load(art)


def test_a_graph_of_another_precision_is_refused(art, tiny_art16):
    shutil.copyfile(tiny_art16 / "vocoder.onnx", art / "vocoder.onnx")
    shutil.copyfile(tiny_art16 / "vocoder.onnx.data", art / "vocoder.onnx.data")
    resize(art, "vocoder.onnx", "vocoder.onnx.data")
    with pytest.raises(ArtifactsError, match="vocoder.onnx does not match.*latents is float16, the manifest says float32"):
        Assistant.load(art)


def test_a_stale_graph_of_another_size_is_refused(art):
    """Same names, ranks and dtypes, another model's width: an adapter taking 32-wide encoder frames."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", 1500, 32])
    y = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 188, 64])
    graph = helper.make_graph([helper.make_node("Identity", ["hidden"], ["features"])], "stale", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), art / "audio_adapter.onnx")
    resize(art, "audio_adapter.onnx")
    with pytest.raises(ArtifactsError, match="hidden has 32 on axis 2, the manifest says 64"):
        Assistant.load(art)


def test_a_truncated_file_is_refused_at_load(art):
    (art / "embed_tokens.onnx.data").write_bytes(b"\0" * 10)
    with pytest.raises(ArtifactsError, match=r"embed_tokens\.onnx\.data: 10 bytes, the manifest says \d+ \(truncated"):
        Assistant.load(art)


@pytest.mark.parametrize(
    "change,expect",
    [
        (lambda m: m["llm"].pop("head_dim"), "manifest.json.llm lacks 'head_dim'"),
        (lambda m: m["llm"].update(head_dim=32), "backbone past_key_values.0.key has 16 on axis 3 but llm.head_dim is 32"),
        (lambda m: m["graphs"].pop("vocoder"), "lists no vocoder graph"),
        (lambda m: m["graphs"]["audio_encoder"]["inputs"][0].update(name="features"), "not the ones this covo-edge feeds"),
        (lambda m: m["graphs"]["audio_encoder"]["inputs"][0].update(shape=["batch", 80, 3000]),
         "audio_encoder mel has 80 on axis 1 but the frontend's mel bins is 128"),
        (lambda m: m["files"].pop("vocoder.onnx.data"), "vocoder's file vocoder.onnx.data has no size and checksum"),
    ],
)
def test_an_inconsistent_manifest_is_refused(art, change, expect):
    edit_manifest(art, change)
    with pytest.raises(ArtifactsError, match=re.escape(expect)):
        Manifest.load(art)


def test_check_passes_intact_artifacts(tiny_art, capsys):
    from covo_edge.runtime.check import run_check

    assert run_check(str(tiny_art)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(GRAPH_IO) + 2  # one per graph, the other files, the verdict
    for line, graph in zip(lines, GRAPH_IO):
        assert line.split()[:2] == ["ok", graph] and "sha256 ok" in line and "finite" in line
    assert lines[-2].startswith("ok    other files") and lines[-1].endswith("all checks passed")


def test_check_finds_a_changed_byte_and_a_broken_graph(art, capsys):
    from covo_edge.runtime.check import run_check

    data = bytearray((art / "backbone.onnx.data").read_bytes())
    data[1000] ^= 0xFF  # same size: only the checksum can tell
    (art / "backbone.onnx.data").write_bytes(bytes(data))
    shutil.copyfile(art / "audio_adapter.onnx", art / "vocoder.onnx")
    edit_manifest(art, lambda m: m["files"]["vocoder.onnx"].update(bytes=(art / "vocoder.onnx").stat().st_size,
                                                                      sha256=sha256(art / "vocoder.onnx")))
    np.save(art / "voices" / "prompt" / "speaker_embed.npy", np.zeros((1, 3), np.float32))
    assert run_check(str(art)) == 1
    lines = {line.split()[1]: line for line in capsys.readouterr().out.strip().splitlines()[:-1]}
    assert lines["backbone"].startswith("FAIL") and "backbone.onnx.data: its sha256 differs" in lines["backbone"]
    assert lines["vocoder"].startswith("FAIL") and "does not match its manifest entry" in lines["vocoder"]
    assert lines["other"].startswith("FAIL") and "voices/prompt/speaker_embed.npy" in lines["other"]
    assert all(lines[g].startswith("ok") for g in GRAPH_IO if g not in ("backbone", "vocoder"))

