"""Broken release directories and bad audio give one clear message, never a stack trace as the message."""

import json
import logging
import shutil

import numpy as np
import pytest

from conftest import needs

torch = needs("torch", "export")

from safetensors.torch import load_file, save_file  # noqa: E402

from covo_edge.export.config import ReleaseError  # noqa: E402
from covo_edge.runtime.frontend import AudioError  # noqa: E402
from covo_edge.export.release import Release, load_covo, load_token2wav  # noqa: E402

SHARD = "model-00002-of-00002.safetensors"


@pytest.fixture
def broken(tiny_dir, tmp_path):
    d = tmp_path / "release"
    shutil.copytree(tiny_dir, d)
    return d


def test_not_a_directory(tmp_path):
    with pytest.raises(ReleaseError, match="not a directory"):
        Release.open(tmp_path / "nope")


@pytest.mark.parametrize("name", ["config.json", "token2wav/model.pt", "token2wav/config.json", "tokenizer.json"])
def test_missing_file_is_named(broken, name):
    (broken / name).unlink()
    with pytest.raises(ReleaseError, match=name.split("/")[-1]):
        Release.open(broken)


def test_missing_shard_is_named(broken):
    (broken / SHARD).unlink()
    with pytest.raises(ReleaseError, match=SHARD):
        Release.open(broken)


def test_truncated_shard(broken):
    data = (broken / SHARD).read_bytes()
    (broken / SHARD).write_bytes(data[: len(data) // 2])
    with pytest.raises(ReleaseError, match="corrupt or truncated"):
        load_covo(Release.open(broken))


def test_missing_key_is_named(broken):
    shard = load_file(broken / SHARD)
    del shard["audio_adapter.downsample_layers.2.linear2.bias"]
    save_file(shard, broken / SHARD)
    with pytest.raises(ReleaseError, match=r"lacks 1 weights: audio_adapter\.downsample_layers\.2\.linear2\.bias"):
        load_covo(Release.open(broken))


def test_unexpected_key_is_reported(broken, caplog):
    shard = load_file(broken / SHARD)
    shard["extra.thing"] = torch.zeros(3, dtype=torch.bfloat16)
    save_file(shard, broken / SHARD)
    with caplog.at_level(logging.WARNING):
        load_covo(Release.open(broken))
    assert "extra.thing" in caplog.text


def test_config_mismatch_names_the_shapes(broken):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["llm_config"]["intermediate_size"] = 96
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ReleaseError, match=r"wrong shape.*mlp"):
        load_covo(Release.open(broken))


def test_wrong_model_type(broken):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["model_type"] = "qwen2"
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ReleaseError, match="expected 'covo_audio'"):
        Release.open(broken)


def test_corrupt_token2wav_checkpoint(broken):
    (broken / "token2wav" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ReleaseError, match="model.pt"):
        load_token2wav(Release.open(broken))


def test_missing_voice(broken):
    for voice in ("prompt", "long"):
        shutil.rmtree(broken / "token2wav" / voice)
    with pytest.raises(ReleaseError, match="no voice prompt dir"):
        Release.open(broken).voice()


@pytest.mark.parametrize(
    "wav,sr,match",
    [
        (np.zeros(0), 16000, "empty"),
        (np.array([0.1, np.nan] * 800), 16000, "NaN"),
        (np.array([np.inf] * 1600), 16000, "NaN or infinite"),
        (np.full(1, 0.1), 16000, "too short"),
        (np.zeros(1600), 16000, "silent"),
        (np.zeros((2, 2, 10)), 16000, "shape"),
        (np.ones(1600), 0, "sample rate"),
    ],
)
def test_reference_rejects_bad_audio(tiny_chat, wav, sr, match):
    """The reference checks audio exactly as the runtime does."""
    with pytest.raises(AudioError, match=match):
        tiny_chat.reply(wav, sr, max_new_tokens=1)
