"""What the README promises of the command line when things go right (and when a conversation outgrows its
context): streamed wavs, vocoding given codes, multi-turn chats against the PyTorch reference, the
export bound, quantize's LM-head knob and --force, and bench-kv (bench and --compare: tests/test_bench.py). Run in-process through `main`,
as the console script does; replies are forced, never left to what the random model happens to emit."""

import json
import re

import numpy as np
import pytest
import soundfile as sf

from conftest import cli, needs

torch = needs("torch", "export")

from covo_edge.runtime import Assistant, Debug, Token2Wav, files  # noqa: E402
from covo_edge.runtime.cli import main  # noqa: E402
from covo_edge.runtime.frontend import load_audio  # noqa: E402
from covo_edge.runtime.manifest import Manifest  # noqa: E402
from covo_edge.runtime.synthetic import interleaved_reply, synthetic_utterance  # noqa: E402
from covo_edge.runtime.token2wav import manifest_voice  # noqa: E402

CODES = 151671  # first audio code id
STOP = 151645  # <|im_end|>, the speech mode's stop id
FEW_CODES = [11, CODES + 5, CODES + 6, CODES + 7, 12]  # a short reply with text and three audio codes


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def close(ours, ref, rel=2e-4):
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max()
    assert err <= rel * np.abs(ref).max(), f"max abs error {err:.3g} vs max |ref| {np.abs(ref).max():.3g}"


def forced_reply(art, steps: int, seed: int = 0) -> np.ndarray:
    """The released model's interleave (5 text ids, then 15 audio codes), never the stop id."""
    m = Manifest.load(art)
    ids = interleaved_reply(steps, m.tokenizer.audio_code_offset, m.num_audio_codes, seed=seed)
    assert STOP not in ids and (ids >= CODES).any()
    return ids


def question(path, seconds: float, rate: int = 16000, seed: int = 0):
    """A synthetic question written as float samples, so the file reads back bit for bit."""
    sf.write(path, synthetic_utterance(seconds, rate, seed=seed), rate, subtype="FLOAT")
    return path


# --- chat --stream ---------------------------------------------------------------------------------------


def test_stream_grows_a_part_file_then_renames_it(tiny_art, tmp_path, capsys, monkeypatch):
    """`chat --stream`: turn_0.wav.part grows chunk by chunk while the turn runs (a player can follow it),
    becomes turn_0.wav when whole, and the times to first text and audio are printed; the file holds the
    very samples `Assistant.stream` yields for the same forced reply and seed."""
    q = question(tmp_path / "q.wav", 2.0)
    forced = forced_reply(tiny_art, 100)
    np.save(tmp_path / "t.npy", forced)
    out = tmp_path / "out"
    seen = []
    write = files.WavWriter.write

    def spy(self, samples):
        write(self, samples)
        seen.append((len(samples), self.part.stat().st_size, self.path.exists()))

    monkeypatch.setattr(files.WavWriter, "write", spy)
    rc, stdout, err = cli(capsys, "chat", tiny_art, "--input", q, "--output-dir", out, "--stream",
                          "--force-tokens", tmp_path / "t.npy", "--seed", 7)
    assert rc == 0, err
    assert len(seen) >= 3, seen  # several chunks, not one write at the end
    header = 44  # the RIFF, fmt and data chunks of a float32 mono WAV
    assert [size for _, size, _ in seen] == [header + 4 * n for n in np.cumsum([n for n, _, _ in seen])]
    assert not any(named for _, _, named in seen)  # the final name only ever holds a whole file
    assert sorted(p.name for p in out.iterdir()) == ["turn_0.txt", "turn_0.wav"]  # no .part left

    times = re.search(r"^turn 0: first text after (\d+\.\d\d) s, first audio after (\d+\.\d\d) s$", stdout, re.M)
    assert times, stdout
    assert float(times[1]) <= float(times[2])  # the reply opens with 5 text ids

    wav, rate = sf.read(out / "turn_0.wav", dtype="float32")
    n_codes = int((forced >= CODES).sum())
    assert rate == 24000 and wav.shape == (240 * (4 * n_codes - 3),)
    assert f"{n_codes} audio codes, length" in stdout

    assistant = Assistant.load(tiny_art)
    x, sr = load_audio(q)
    chunks = list(assistant.stream(x, sr, seed=7, debug=Debug(force_tokens=forced)))
    api = np.concatenate([c.audio for c in chunks if c.audio is not None])
    assert sum(n for n, _, _ in seen) == len(api)
    np.testing.assert_array_equal(wav, api)


# --- token2wav -------------------------------------------------------------------------------------------


def test_token2wav_equals_the_reference_given_the_same_noise(tiny_art, tiny_chat, tmp_path, capsys):
    """`covo-edge token2wav` vocodes given codes and noise into the reference's 24 kHz speech."""
    codes = np.array([5, 77, 16383, 0, 1234, 9000, 42, 300], np.int64)
    m = Manifest.load(tiny_art)
    voice = manifest_voice(tiny_art, m)
    assert np.array_equal(voice.prompt_token, np.asarray(tiny_chat.voice.prompt_token).reshape(-1))
    noise = np.random.default_rng(3).standard_normal(Token2Wav(None, m).noise_shape(len(codes), voice))
    noise = noise.astype(np.float32)
    np.save(tmp_path / "c.npy", codes)
    np.save(tmp_path / "n.npy", noise)
    out = tmp_path / "out.wav"
    rc, stdout, err = cli(capsys, "token2wav", tiny_art, "--codes", tmp_path / "c.npy", "--noise", tmp_path / "n.npy",
                          "-o", out)
    assert rc == 0 and err == "", err
    samples = 240 * (4 * len(codes) - 3)
    assert stdout.strip() == f"wrote {out}: {samples} samples ({samples / 24000:.2f} s)"
    assert sf.info(out).subtype == "FLOAT"  # float32 samples, no PCM rounding to allow for
    wav, rate = sf.read(out, dtype="float32")
    ref, _ = tiny_chat.token2wav(torch.from_numpy(codes), tiny_chat.voice, torch.from_numpy(noise))
    assert rate == 24000
    close(wav, ref.numpy(), rel=2e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "n.npy", "out.wav"]  # no temp file left


# --- chat over several turns -----------------------------------------------------------------------------


def test_a_second_turn_continues_the_first_as_the_reference_does(tiny_art, tiny_chat, tmp_path, capsys,
                                                                  monkeypatch):
    """Two --input turns on one conversation, each replaying its --force-tokens: both turns' files are
    written, and the dumped prompt ids and every step's logits are the reference's doing the same two
    turns, so the second turn ran on the first one's cached history."""
    qs = [question(tmp_path / "q0.wav", 3.0, 16000, seed=1), question(tmp_path / "q1.wav", 2.0, 44100, seed=2)]
    forced = [forced_reply(tiny_art, 24, seed=n) for n in range(2)]
    for n, ids in enumerate(forced):
        np.save(tmp_path / f"t{n}.npy", ids)
    out, dump = tmp_path / "out", tmp_path / "d.npz"
    rc, stdout, err = cli(capsys, "chat", tiny_art, "--input", qs[0], "--input", qs[1], "--output-dir", out,
                          "--force-tokens", tmp_path / "t0.npy", "--force-tokens", tmp_path / "t1.npy",
                          "--dump", dump, "--dump-logits", "all")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["turn_0.txt", "turn_0.wav", "turn_1.txt", "turn_1.wav"]
    assert re.findall(r"^turn (\d): .*\((\d+) text ids, (\d+) audio codes, length\)$", stdout, re.M) == [
        (str(n), str(int((ids < CODES).sum())), str(int((ids >= CODES).sum()))) for n, ids in enumerate(forced)]
    d = np.load(dump)
    monkeypatch.setattr(tiny_chat, "mode", "text")  # the reference's speech (other noise) is not compared: skip it
    tiny_chat.reset()
    for n, (q, ids) in enumerate(zip(qs, forced, strict=True)):
        wav, rate = load_audio(q)
        ref = tiny_chat.reply(wav, rate, force_tokens=ids.tolist(), keep_logits=True)
        assert np.array_equal(d[f"t{n}_input_ids"], ref.input_ids), n
        assert np.array_equal(d[f"t{n}_tokens"], ids) and np.array_equal(ref.tokens, ids)
        close(d[f"t{n}_prefill_logits"], ref.step_logits[0], rel=2e-4)
        assert len(d[f"t{n}_step_logits"]) == len(ref.step_logits) == len(ids)
        for a, b in zip(d[f"t{n}_step_logits"], ref.step_logits, strict=True):
            close(a, b, rel=2e-4)
        spoken, _ = sf.read(out / f"turn_{n}.wav", dtype="float32")
        assert spoken.shape == (240 * (4 * int((ids >= CODES).sum()) - 3),)


# --- a full context --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["exact", "stream"])
def test_a_full_context_stops_with_one_line_after_the_turns_that_fit(tiny_art, tmp_path, capsys, stream):
    """35 s questions fill the artifacts' 1024-token context within a few turns: the chat stops before the
    turn that does not fit with one line saying to start over or export a larger context (status 2); every
    completed turn's text and wav are there, whole, and nothing of the refused turn (no .part, no temp file)."""
    inputs = [question(tmp_path / f"q{n}.wav", 35.0, seed=n) for n in range(4)]
    np.save(tmp_path / "t.npy", np.array(FEW_CODES))
    out = tmp_path / "out"
    args = [a for q in inputs for a in ("--input", q, "--force-tokens", tmp_path / "t.npy")]
    rc, stdout, err = cli(capsys, "chat", tiny_art, *args, "--output-dir", out, "--max-new-tokens", 5,
                          "--dump", tmp_path / "d.npz", *(["--stream"] if stream else []))
    assert rc == 2, err
    line = one_line(err)
    done = [int(n) for n in re.findall(r"^turn (\d): .*audio codes", stdout, re.M)]
    assert 1 <= len(done) < len(inputs) and done == list(range(len(done))), stdout
    assert re.fullmatch(rf"covo-edge chat: turn {len(done)} does not fit: the conversation holds \d+ tokens of the "
                        rf"1024-token context; turns 0-{len(done) - 1} were written; start over with fewer or shorter "
                        r"turns, or export with a larger --max-context", line), line
    assert sorted(p.name for p in out.iterdir()) == sorted(f"turn_{n}.{x}" for n in done for x in ("txt", "wav"))
    for n in done:
        wav, _ = sf.read(out / f"turn_{n}.wav", dtype="float32")
        assert wav.shape == (240 * (4 * 3 - 3),) and np.isfinite(wav).all()
    dumped = np.load(tmp_path / "d.npz")  # the turns that fit are dumped too
    assert sorted({k.split("_")[0] for k in dumped.files}) == [f"t{n}" for n in done]


# --- export's bound on the context -----------------------------------------------------------------------


@pytest.mark.parametrize("context", [131073, 10**9, 255])
def test_export_refuses_a_context_outside_the_models_positions(tiny_dir, tmp_path, capsys, context):
    """--max-context between 256 and the model's 131072 positions, checked before any work."""
    rc, stdout, err = cli(capsys, "export", tiny_dir, "-o", tmp_path / "x", "--max-context", context)
    assert rc == 2 and stdout == ""
    assert one_line(err) == (f"covo-edge export: --max-context must be between 256 and the model's 131072 "
                             f"positions, got {context}")
    assert list(tmp_path.iterdir()) == []


# --- quantize: the LM head's knob and --force ------------------------------------------------------------

QUICK = ["--recipe", "int8-weights", "--utterances", "2", "--decode-steps", "4", "--report-steps", "20"]


def lm_head(art):
    """The backbone's LM head weight initializers (2-D, vocabulary last) and the float MatMul still reading one."""
    import onnx

    from covo_edge.calibration.recipes import lm_head_node

    m = Manifest.load(art)
    model = onnx.load(str(art / m.graphs["backbone"].file), load_external_data=False)
    hidden = m.llm.hidden_size
    heads = [t.data_type for t in model.graph.initializer if list(t.dims) == [hidden, m.llm.vocab_size]]
    return heads, lm_head_node(model, m.llm.vocab_size), m.precision.graphs["backbone"]


@pytest.fixture(scope="module")
def quantized_keep(tiny_art, tmp_path_factory):
    """`covo-edge quantize --recipe int8-weights --lm-head keep` of the session artifacts."""
    needs("modelopt", "calibration")
    out = tmp_path_factory.mktemp("quantized") / "keep"
    assert main(["quantize", str(tiny_art), "-o", str(out), *QUICK, "--lm-head", "keep"]) == 0
    return out


@pytest.mark.slow
def test_quantize_lm_head_keep_leaves_the_head_in_float(quantized_keep):
    """--lm-head keep: the body is int8, the LM head stays as exported, and the manifest says so."""
    import onnx

    heads, node, words = lm_head(quantized_keep)
    assert heads == [onnx.TensorProto.FLOAT] and node is not None
    assert words.endswith("LM head float32"), words
    report = json.loads((quantized_keep / "precision_report.json").read_text())
    assert report["recipe"] == "int8-weights" and report["lm_head"] == "keep"


@pytest.mark.slow
def test_quantize_replaces_an_earlier_output_only_with_force(tiny_art, quantized_keep, tmp_path, capsys):
    """Quantizing into an earlier quantize's folder is refused without --force (one line, the folder
    untouched); with --force the new output (here with an int4 LM head) replaces it whole."""
    import shutil

    import onnx

    q = tmp_path / "q"
    shutil.copytree(quantized_keep, q)
    (q / "marker").write_text("from before")
    rc, _, err = cli(capsys, "quantize", tiny_art, "-o", q, *QUICK, "--lm-head", "int4")
    assert rc == 2
    assert one_line(err) == f"covo-edge quantize: {q} exists (an earlier `covo-edge quantize`): pass --force to replace it"
    assert (q / "marker").read_text() == "from before" and lm_head(q)[0] == [onnx.TensorProto.FLOAT]
    rc, stdout, err = cli(capsys, "quantize", tiny_art, "-o", q, *QUICK, "--lm-head", "int4",
                          "--force")
    assert rc == 0, err
    assert not (q / "marker").exists()
    heads, node, words = lm_head(q)
    assert heads == [onnx.TensorProto.INT4] and node is None
    assert "LM head int4 weights" in words, words
    assert "(LM head int4)" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # no staged or old folder left beside it


def test_quantize_refuses_an_earlier_output_in_one_line(tiny_art, tmp_path, capsys):
    """The refusal is checked before any work, so stderr is the one line naming the fix (README, exit status 2)."""
    needs("modelopt", "calibration")
    q = tmp_path / "q"
    q.mkdir()
    (q / files.STAMP).write_text(json.dumps({"written_by": "quantize"}))
    rc, stdout, err = cli(capsys, "quantize", tiny_art, "-o", q, *QUICK)
    assert rc == 2 and stdout == ""
    assert err == f"covo-edge quantize: {q} exists (an earlier `covo-edge quantize`): pass --force to replace it\n"


# --- bench -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_kv_prints_each_history_lengths_timings(capsys):
    """`bench-kv --history 64 128` (small: two layers, a 4096-row head, a few rounds): one JSON object, the
    three forms' step times and the shares per history."""
    rc, stdout, err = cli(capsys, "bench-kv", "--history", 64, 128, "--layers", 2, "--vocab", 4096, "--rounds", 4)
    assert rc == 0, err
    result = json.loads(stdout)
    assert list(result) == ["64", "128"]
    row = result["128"]
    assert set(row) == {"concat_ms", "in_place_ms", "no_copy_ms", "in_place_saves", "copy_share"}
    assert all(row[f"{form}_ms"] > 0 for form in ("concat", "in_place", "no_copy"))
    assert row["in_place_saves"] == pytest.approx(1 - row["in_place_ms"] / row["concat_ms"])
    assert row["copy_share"] == pytest.approx(1 - row["no_copy_ms"] / row["concat_ms"])
