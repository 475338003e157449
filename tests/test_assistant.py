"""The Assistant (torch-free runtime, ONNX Runtime CPU) against the PyTorch reference on the tiny release."""

import subprocess
import sys

import numpy as np
import pytest

from conftest import needs

torch = needs("torch", "export")

from covo_edge.runtime import Assistant, ContextFullError, Debug, Token2Wav  # noqa: E402
from covo_edge.runtime.synthetic import synthetic_utterance  # noqa: E402
from covo_edge.runtime.token2wav import torch_linspace  # noqa: E402

TEACHER_STEPS = 48


def close(ours, ref, rel=1e-4):
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max()
    assert err <= rel * np.abs(ref).max(), f"max abs error {err:.3g} vs max |ref| {np.abs(ref).max():.3g}"


@pytest.fixture(scope="module")
def assistant(tiny_art):
    return Assistant.load(tiny_art)


@pytest.fixture(scope="module")
def reference(tiny_dir):
    from covo_edge.export.pipeline import ReferenceChat

    return ReferenceChat(tiny_dir)


STOP = 151645  # <|im_end|>, the speech mode's stop id


def _teacher_tokens(n: int, stop: int = STOP) -> list[int]:
    """A plausible interleaved reply that never stops early: text ids and audio codes, no stop id."""
    rng = np.random.default_rng(11)
    ids = [int(x) for x in rng.integers(0, 151643, n)]
    return [151671 + (i * 997) % 16384 if k % 4 else i for k, i in enumerate(ids) if i != stop]


@pytest.mark.parametrize("seconds", [3.0, 35.0])
def test_two_turns_match_the_reference(assistant, reference, seconds):
    """Same input ids; embeddings and prefill logits within fp32 tolerance; every teacher-forced
    decode step's logits within tolerance for 48 steps, on turn 1 and on turn 2 over the history."""
    assistant.reset()
    reference.reset()
    wavs = [synthetic_utterance(seconds, 16000, seed=1), synthetic_utterance(2.0, 44100, seed=2)]
    for turn, wav in enumerate(wavs):
        sr = 16000 if turn == 0 else 44100
        forced = _teacher_tokens(TEACHER_STEPS)
        ref = reference.reply(wav, sr, force_tokens=forced, keep_logits=True)
        dump = {}
        ours = assistant.reply(wav, sr, debug=Debug(force_tokens=np.array(forced), dump=dump, step_logits="all"))
        assert np.array_equal(dump["input_ids"], ref.input_ids)
        close(dump["inputs_embeds"], ref.inputs_embeds)
        close(dump["prefill_logits"], ref.step_logits[0])
        assert len(dump["step_logits"]) == len(ref.step_logits) == len(forced)
        for a, b in zip(dump["step_logits"], ref.step_logits):
            close(a, b, rel=2e-4)
        assert np.array_equal(ours.tokens, ref.tokens)
        assert assistant.context_length == reference.cache.get_seq_length()


def test_free_running_greedy_tokens_equal_the_reference(assistant, reference):
    assistant.reset()
    reference.reset()
    wav = synthetic_utterance(3.0)
    ref = reference.reply(wav, 16000, max_new_tokens=40, keep_logits=True)
    ours = assistant.reply(wav, 16000, max_new_tokens=40)
    gaps = [float(np.diff(np.sort(lg)[-2:])[0]) for lg in ref.step_logits]
    assert min(gaps) > 1e-3, f"a step's top-2 gap {min(gaps):.2g} is below the fp32 tolerance: compare by teacher forcing"
    assert np.array_equal(ours.tokens, ref.tokens)
    assert np.array_equal(ours.audio_codes, ref.codes) and ours.text == ref.text


def test_speech_matches_the_reference_given_the_same_noise(assistant, reference):
    codes = np.array([5, 77, 16383, 0, 1234, 9000, 42], np.int64)
    t2w = Token2Wav(assistant.backend, assistant.manifest)
    shape = t2w.noise_shape(len(codes), assistant.voice)
    noise = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    latents = t2w.latents(codes, assistant.voice, noise)
    wav = t2w.vocode(latents)
    ref_wav, ref_latents = reference.token2wav(torch.from_numpy(codes), reference.voice, torch.from_numpy(noise))
    close(latents, ref_latents.numpy(), rel=2e-4)
    close(wav, ref_wav.numpy(), rel=2e-4)
    assert wav.shape == (240 * (4 * len(codes) - 3),)


def test_ode_times_equal_torch_linspace():
    for steps in range(2, 200):
        assert np.array_equal(torch_linspace(steps), torch.linspace(0, 1, steps).numpy())


def test_a_seeded_second_turn_replays_and_another_seed_differs(assistant):
    """Turn 2 samples (temperature 0.5): the same history and seed give the same tokens and speech."""
    wav = synthetic_utterance(1.0)
    replies = []
    for seed in (5, 5, 6):
        assistant.reset()
        assistant.reply(wav, 16000, max_new_tokens=5)
        replies.append(assistant.reply(wav, 16000, max_new_tokens=30, seed=seed))
    first, again, other = replies
    assert np.array_equal(first.tokens, again.tokens) and np.array_equal(first.audio, again.audio)
    assert not np.array_equal(first.tokens, other.tokens)


def test_stream_yields_text_deltas_then_the_exact_audio(assistant):
    """Exact token2wav: text deltas while the reply decodes, the whole reply's audio in the last chunk. Tokens
    are forced so that the reply holds audio codes whatever the random model prefers."""
    assistant.reset()
    forced = np.array(_teacher_tokens(20))
    chunks = list(assistant.stream(synthetic_utterance(2.0), 16000, token2wav="exact",
                                   debug=Debug(force_tokens=forced)))
    reply = chunks[-1].reply
    assert reply is not None and chunks[-1].audio is not None
    assert "".join(c.text for c in chunks) == reply.text
    assert all(c.audio is None and c.reply is None for c in chunks[:-1])
    assert len(reply.audio_codes) == int((forced >= 151671).sum()) == 15
    assert np.array_equal(chunks[-1].audio, reply.audio) and reply.audio.shape == (240 * (4 * 15 - 3),)


def test_text_mode_and_context_full(tiny_art):
    a = Assistant.load(tiny_art, mode="text")
    r = a.reply(synthetic_utterance(1.0), 16000, max_new_tokens=6)
    assert r.audio is None and set(a.backend.sessions) == {"audio_encoder", "audio_adapter", "embed_tokens", "backbone"}
    wav = synthetic_utterance(10.0)
    with pytest.raises(ContextFullError, match="reset"):
        for _ in range(40):  # ~90 tokens a turn against a 1024-token context
            a.reply(wav, 16000, max_new_tokens=6)
    assert a.context_length <= a.max_context
    a.reset()
    assert a.reply(wav, 16000, max_new_tokens=2).tokens.size == 2


def test_runtime_never_imports_torch(tiny_art, tmp_path):
    """A whole turn, CLI included, in a process that fails if torch is imported."""
    import soundfile as sf

    wav = tmp_path / "q.wav"
    sf.write(wav, synthetic_utterance(2.0), 16000)
    forced = tmp_path / "forced.npy"
    np.save(forced, np.array(_teacher_tokens(12)))
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'): raise ImportError('torch imported')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from covo_edge.runtime.cli import main\n"
        f"rc = main(['chat', {str(tiny_art)!r}, '--input', {str(wav)!r}, '--output-dir', {str(tmp_path / 'out')!r},"
        f" '--force-tokens', {str(forced)!r}, '--dump', {str(tmp_path / 'd.npz')!r}, '--dump-logits', '5'])\n"
        "assert rc == 0 and 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)
    assert (tmp_path / "out" / "turn_0.wav").is_file() and (tmp_path / "out" / "turn_0.txt").is_file()
    dump = np.load(tmp_path / "d.npz")
    for n in ("wav_24k", "mel", "encoder_out", "adapter_out", "input_ids", "inputs_embeds", "prefill_logits",
              "tokens", "audio_codes", "latents", "wav", "step_top_ids", "step_top_logits"):
        assert f"t0_{n}" in dump.files
    assert "t0_step_logits" not in dump.files  # the full rows only with --dump-logits all
    assert dump["t0_step_top_ids"].shape == dump["t0_step_top_logits"].shape == (12, 5)
    top = dump["t0_step_top_logits"]
    assert np.all(np.diff(top, axis=1) <= 0)  # best first
    assert dump["t0_step_top_ids"][0, 0] == np.argmax(dump["t0_prefill_logits"])  # step 0 decides on the prefill


def test_fp16_artifacts_answer_end_to_end(tiny_art16, assistant):
    """fp16 graphs through the same runtime: a whole spoken turn, logits close to fp32 (not bit-equal)."""
    a16 = Assistant.load(tiny_art16)
    assistant.reset()
    wav = synthetic_utterance(2.0)
    forced = np.array(_teacher_tokens(12))
    d16, d32 = {}, {}
    r16 = a16.reply(wav, 16000, seed=0, debug=Debug(force_tokens=forced, dump=d16, step_logits="all"))
    assistant.reply(wav, 16000, seed=0, debug=Debug(force_tokens=forced, dump=d32, step_logits="all"))
    assert r16.audio.dtype == np.float32 and np.isfinite(r16.audio).all()
    assert r16.audio.shape == (240 * (4 * len(r16.audio_codes) - 3),)
    close(d16["step_logits"], d32["step_logits"], rel=5e-2)


def test_the_turn_is_timed_stage_by_stage(assistant):
    import time

    assistant.reset()
    t0 = time.perf_counter()
    reply = assistant.reply(synthetic_utterance(2.0), 16000, debug=Debug(force_tokens=np.array(_teacher_tokens(20))))
    wall = time.perf_counter() - t0
    stages = ("frontend", "encoder", "adapter", "prefill", "decode", "token2wav", "vocoder")
    assert all(reply.timings[s] > 0 for s in stages)
    assert sum(reply.timings[s] for s in stages) <= wall  # disjoint parts of one turn
    assert reply.timings["decode_per_token"] == pytest.approx(reply.timings["decode"] / 19)


def test_finish_reasons_and_a_reply_without_codes(assistant):
    assistant.reset()
    wav = synthetic_utterance(1.0)
    stop = assistant.reply(wav, 16000, debug=Debug(force_tokens=np.array([11, 151671 + 3, STOP, 12])))
    assert stop.finish_reason == "stop" and stop.tokens.tolist() == [11, 151674, STOP] and stop.audio_codes.tolist() == [3]
    assistant.reset()
    text_only = assistant.reply(wav, 16000, debug=Debug(force_tokens=np.array([11, 12, 13])))
    assert text_only.finish_reason == "length" and text_only.audio is None and text_only.audio_codes.size == 0


def test_bad_arguments_raise_typed_errors_before_any_work(assistant):
    from covo_edge.runtime import AudioError, InputError, OptionError

    wav = synthetic_utterance(1.0)
    assistant.reset()
    held = assistant.context_length  # the system prompt's cached keys and values
    cases = [
        (dict(max_new_tokens=0), OptionError, "max_new_tokens must be an integer of at least 1, got 0"),
        (dict(max_new_tokens=2.5), OptionError, "max_new_tokens must be an integer"),
        (dict(seed=-1), OptionError, "seed must be an integer of at least 0, got -1"),
        (dict(debug=Debug(force_tokens=np.array([1.5]))), InputError, "integer ids"),
        (dict(debug=Debug(force_tokens=np.array([3, 168055]))), InputError, "id 168055 at index 1 is outside"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            assistant.stream(wav, 16000, **kwargs)
    with pytest.raises(AudioError, match="silent"):
        assistant.reply(np.zeros(16000, np.float32), 16000)
    with pytest.raises(OptionError, match="mode must be one of speech, text"):
        Assistant.load(assistant.artifacts, mode="song")
    assert assistant.context_length == held and assistant.turns == 0  # nothing ran

