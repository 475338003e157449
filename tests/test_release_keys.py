"""The full-size reference, built on the meta device, has exactly the release's keys and shapes."""

import json

import pytest

from conftest import needs, shared_dir

torch = needs("torch", "export")

MANIFEST = "reference/covo_audio_state_dict_manifest.json"


@pytest.fixture(scope="module")
def manifest():
    d = shared_dir()
    if d is None or not (d / MANIFEST).is_file():
        pytest.skip(f"needs ../shared: {MANIFEST} (shipped beside the clone in CI, not in a fresh clone)")
    return json.loads((d / MANIFEST).read_text())


def test_llm_side_matches_release(manifest):
    from covo_edge.export.config import CovoConfig
    from covo_edge.export.release import build_covo

    config = CovoConfig.from_dict(manifest["configs"]["covo_audio_config_to_dict"])
    model = build_covo(config, "meta")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    release = {k["key"]: tuple(k["shape"]) for k in manifest["covo_audio"]["keys"]}
    assert len(release) == manifest["covo_audio"]["num_keys"] == 844
    assert ours == release
    assert sum(v.numel() for v in model.state_dict().values()) == manifest["covo_audio"]["total_numel"]
    assert model.llm.lm_head.weight is not model.llm.model.embed_tokens.weight  # untied, as released


def test_token2wav_side_matches_release(manifest):
    from covo_edge.export.config import Token2WavConfig
    from covo_edge.export.release import release_key_shapes, weight_norm_keys
    from covo_edge.export.token2wav import ReferenceToken2Wav

    config = Token2WavConfig.from_dict(manifest["configs"]["token2wav_config_json"])
    assert (config.s_steps, config.cfg_alpha, config.vocoder.hop) == (10, 1.0, 240)
    with torch.device("meta"):
        model = ReferenceToken2Wav(config)
    ours = release_key_shapes({k: v.shape for k, v in model.state_dict().items()}, weight_norm_keys(model))
    release = {k["key"]: tuple(k["shape"]) for k in manifest["token2wav"]["keys"]}
    assert len(release) == manifest["token2wav"]["num_keys"] == 947
    assert ours == release
    assert len(weight_norm_keys(model)) == manifest["token2wav"]["weight_norm"]["weight_g_keys"]
    # deterministic buffers keep their upstream names and kinds
    buffers = {k["key"] for k in manifest["token2wav"]["keys"] if k["kind"] == "buffer"}
    assert buffers == {k for k, _ in model.named_buffers() if k in release}
