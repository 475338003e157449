"""The PyTorch reference on the tiny release: loading, the whole spoken turn, multi-turn, text mode."""

import json
import time

import numpy as np
import pytest

from conftest import needs

torch = needs("torch", "export")

from safetensors.torch import load_file  # noqa: E402

from covo_edge.export import audio  # noqa: E402
from covo_edge.export.pipeline import ReferenceChat  # noqa: E402
from covo_edge.export.release import Release, load_covo, load_token2wav, token2wav_state  # noqa: E402
from covo_edge.export.tiny import TEXT_VOCAB  # noqa: E402
from covo_edge.export.vocoder import fold_weight_norm  # noqa: E402
from covo_edge.runtime.prompt import turn_text  # noqa: E402
from covo_edge.runtime.synthetic import synthetic_utterance  # noqa: E402


def test_tiny_release_round_trips(tiny_dir):
    release = Release.open(tiny_dir)
    assert len(release.weight_files) == 2  # sharded, with an index
    assert release.config.audio_token_index == TEXT_VOCAB == 151671
    assert release.config.llm.vocab_size == 168055
    model = load_covo(release)
    state = model.state_dict()
    on_disk = {}
    for f in release.weight_files:
        on_disk.update(load_file(f))
    assert set(on_disk) == set(state)
    for k, v in on_disk.items():
        assert v.dtype == torch.bfloat16
        assert torch.equal(state[k], v.float()), k
    assert model.llm.model.rotary_emb.inv_freq.device.type == "cpu"


def test_token2wav_weight_norm_is_folded(tiny_dir):
    raw = torch.load(tiny_dir / "token2wav" / "model.pt", weights_only=True)["model"]
    model = load_token2wav(Release.open(tiny_dir))
    g, v = raw["wavegan.ups.0.0.weight_g"], raw["wavegan.ups.0.0.weight_v"]
    w = model.wavegan.ups[0][0].weight
    # ConvTranspose1d weight [in, out, k]: the norm runs per input channel
    expect = g * v / v.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()
    assert torch.allclose(w, expect, rtol=1e-6, atol=1e-7)
    assert torch.equal(model.token2latent.blocks[0].attn.rotary.inv_freq, raw["token2latent.blocks.0.attn.rotary.inv_freq"])
    mean_var = np.load(tiny_dir / "token2wav" / "global_mean_var.npy").reshape(-1)
    assert np.array_equal(model.global_var.numpy(), mean_var[64:])


@pytest.mark.parametrize("wrap", ["bare", "model", "module"])
def test_token2wav_checkpoint_variants(tiny_dir, wrap):
    raw = torch.load(tiny_dir / "token2wav" / "model.pt", weights_only=True)["model"]
    variant = {"bare": raw, "model": {"model": raw}, "module": {"module." + k: v for k, v in raw.items()}}[wrap]
    state = token2wav_state(variant)
    assert "wavegan.conv_pre.weight" in state and "wavegan.conv_pre.weight_g" not in state
    assert torch.equal(state["wavegan.conv_pre.weight"], fold_weight_norm(raw["wavegan.conv_pre.weight_g"], raw["wavegan.conv_pre.weight_v"]))


def _check_turn(turn, chat, seconds, wall):
    n_slots = audio.num_audio_tokens(int(seconds * 24000))
    assert int((turn.input_ids == chat.audio_slot).sum()) == n_slots
    assert np.all(turn.text_ids < TEXT_VOCAB)
    assert np.all((turn.codes >= 0) & (turn.codes < 16384))
    assert len(turn.text_ids) + len(turn.codes) == len(turn.tokens)
    voice = chat.voice
    frames = 4 * (len(voice.prompt_token) + len(turn.codes)) - len(voice.prompt_latent)
    assert turn.wav.dtype == np.float32 and turn.wav.shape == (240 * max(frames, 0),)
    assert np.isfinite(turn.wav).all() and np.abs(turn.wav).max() <= 1.0
    stages = ("frontend", "encoder", "adapter", "prefill", "decode", "token2wav", "vocoder")
    assert all(turn.timings[s] > 0 for s in stages)
    assert sum(turn.timings[s] for s in stages) <= wall  # stages are disjoint parts of the turn


@pytest.mark.parametrize("seconds", [3.0, 35.0])
def test_spoken_turn_end_to_end(tiny_chat, seconds):
    tiny_chat.reset()
    wav = synthetic_utterance(seconds, 16000)
    t0 = time.perf_counter()
    turn = tiny_chat.reply(wav, 16000, max_new_tokens=40)
    _check_turn(turn, tiny_chat, seconds, time.perf_counter() - t0)
    assert len(turn.codes) > 0 and len(turn.text_ids) > 0  # this seed emits both kinds
    decoded = tiny_chat.tokenizer.decode(turn.input_ids.tolist(), skip_special_tokens=False)
    assert decoded.startswith("<|im_start|>system\n") and decoded.endswith("<|im_start|>assistant\n")


def test_two_segments_keep_the_first_n_frames(tiny_chat):
    """35 s: two encoder windows give 376 adapter frames; the prompt takes the first 188 + 31."""
    wav = synthetic_utterance(35.0, 24000)
    mel, feats, n_slots, _ = tiny_chat.encode_audio(wav, 24000)
    assert mel.shape == (2, 128, 3000) and feats.shape[0] == 376 and n_slots == 219
    ids = torch.tensor([tiny_chat.tokenizer.encode(turn_text(n_slots, True, tiny_chat.system_prompt)).ids])
    embeds = tiny_chat.model.embed(ids, tiny_chat.audio_slot, feats)
    slots = (ids[0] == tiny_chat.audio_slot).nonzero()[:, 0]
    assert torch.equal(embeds[0, slots], feats[:219])
    assert torch.equal(embeds[0, 0], tiny_chat.model.llm.get_input_embeddings().weight[ids[0, 0]])


def test_kv_cache_decode_equals_one_full_forward(tiny_chat):
    """Teacher-forced decode step logits equal the logits of one forward over the whole sequence."""
    from covo_edge.export.generate import generate
    from covo_edge.runtime.sampling import FIRST_TURN

    tiny_chat.reset()
    _, feats, n_slots, _ = tiny_chat.encode_audio(synthetic_utterance(2.0), 16000)
    ids = torch.tensor([tiny_chat.tokenizer.encode(turn_text(n_slots, True, tiny_chat.system_prompt)).ids])
    embeds = tiny_chat.model.embed(ids, tiny_chat.audio_slot, feats)
    forced = [11, 151671 + 5, 300, 151671 + 16000, 42, 7]
    gen = generate(tiny_chat.model, embeds, ids, tiny_chat.model.new_cache(), -1, FIRST_TURN, 10,
                   force_tokens=forced, keep_logits=True)
    assert gen.tokens == forced and len(gen.step_logits) == len(forced)
    full_embeds = torch.cat([embeds, tiny_chat.model.llm.get_input_embeddings()(torch.tensor([forced[:-1]]))], 1)
    full = tiny_chat.model(full_embeds, tiny_chat.model.new_cache(), last_only=False)[0]
    steps = torch.stack(gen.step_logits)
    np.testing.assert_allclose(steps.numpy(), full[ids.shape[1] - 1 :].numpy(), atol=1e-4 * full.abs().max().item())


def test_second_turn_continues_the_history(tiny_chat):
    tiny_chat.reset()
    wav = synthetic_utterance(2.0)
    t1 = tiny_chat.reply(wav, 16000, max_new_tokens=12)
    len1 = tiny_chat.cache.get_seq_length()
    assert len1 == len(t1.input_ids) + len(t1.tokens) - 1  # the last token is never fed
    t2 = tiny_chat.reply(wav, 16000, max_new_tokens=12, seed=3)
    assert tiny_chat.tokenizer.decode(t2.input_ids.tolist(), skip_special_tokens=False).startswith("\n<|im_start|>user\n")
    assert tiny_chat.cache.get_seq_length() == len1 + len(t2.input_ids) + len(t2.tokens) - 1
    # the same second turn replayed on a fresh history of the same first turn is reproducible
    tiny_chat.reset()
    tiny_chat.reply(wav, 16000, max_new_tokens=12)
    again = tiny_chat.reply(wav, 16000, max_new_tokens=12, seed=3)
    assert np.array_equal(again.tokens, t2.tokens) and np.array_equal(again.wav, t2.wav)


def test_text_mode_stops_at_endoftext_and_writes_no_audio(tiny_dir):
    chat = ReferenceChat(tiny_dir, mode="text")
    assert chat.stop_id == 151643 and chat.token2wav is None
    turn = chat.reply(synthetic_utterance(1.0), 16000, max_new_tokens=8)
    assert turn.wav is None and len(turn.tokens) <= 8


def test_injected_noise_gives_the_same_speech(tiny_chat):
    codes = torch.tensor([5, 77, 16383, 0, 1234])
    noise = tiny_chat.token2wav.noise(len(codes), tiny_chat.voice, torch.Generator().manual_seed(9))
    wav1, lat1 = tiny_chat.token2wav(codes, tiny_chat.voice, noise)
    wav2, _ = tiny_chat.token2wav(codes, tiny_chat.voice, noise.clone())
    assert torch.equal(wav1, wav2)
    assert lat1.shape == (1, 4 * 5 - 3, 64) and wav1.shape == (240 * 17,)
    wav3, _ = tiny_chat.token2wav(codes, tiny_chat.voice, noise + 0.5)
    assert not torch.equal(wav1, wav3)


def test_config_reads_both_rope_styles(tiny_dir):
    from covo_edge.export.config import CovoConfig

    d = json.loads((tiny_dir / "config.json").read_text())
    old = dict(d["llm_config"])
    old.pop("rope_parameters")
    old["rope_theta"] = 1000000.0
    cfg = CovoConfig.from_dict({**d, "llm_config": old})
    assert cfg.llm.rope_parameters["rope_theta"] == 1000000.0
    assert cfg.llm.sliding_window is None


@pytest.mark.slow
def test_make_tiny_is_deterministic(tiny_dir, tmp_path):
    from covo_edge.export.tiny import make_tiny

    same = make_tiny(tmp_path / "same", seed=0, progress=lambda *_: None)
    other = make_tiny(tmp_path / "other", seed=1, progress=lambda *_: None)
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "tokenizer.json",
                 "config.json", "token2wav/global_mean_var.npy", "token2wav/prompt/prompt_latent.npy"):
        assert (same / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    assert (other / "model-00002-of-00002.safetensors").read_bytes() != (tiny_dir / "model-00002-of-00002.safetensors").read_bytes()
    a = torch.load(same / "token2wav" / "model.pt", weights_only=True)["model"]
    b = torch.load(tiny_dir / "token2wav" / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
