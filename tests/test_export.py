"""Every exported graph on ONNX Runtime (CPU, fp32) against the PyTorch reference, on the tiny release."""

import numpy as np
import onnxruntime as ort
import pytest

from conftest import TINY_VOICES, needs

torch = needs("torch", "export")

from covo_edge.export import audio  # noqa: E402
from covo_edge.runtime.manifest import Manifest  # noqa: E402
from covo_edge.runtime.synthetic import synthetic_utterance  # noqa: E402


@pytest.fixture(scope="module")
def art(tiny_art):
    return tiny_art


@pytest.fixture(scope="module")
def manifest(art):
    return Manifest.load(art)


@pytest.fixture(scope="module")
def sessions(art, manifest):
    return {name: ort.InferenceSession(str(art / g.file), providers=["CPUExecutionProvider"])
            for name, g in manifest.graphs.items()}


def close(ours, ref, rel=1e-4):
    ref = np.asarray(ref)
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max()
    assert err <= rel * np.abs(ref).max(), f"max abs error {err:.3g} vs max |ref| {np.abs(ref).max():.3g}"


def test_manifest_describes_every_graph(art, manifest, sessions):
    assert set(manifest.graphs) == {"audio_encoder", "audio_adapter", "embed_tokens", "backbone", "token2latent_codes",
                                    "token2latent_time", "token2latent_field", "vocoder"}
    for name, g in manifest.graphs.items():
        s = sessions[name]
        assert [i.name for i in s.get_inputs()] == [t.name for t in g.inputs]
        assert [o.name for o in s.get_outputs()] == [t.name for t in g.outputs]
        assert all((art / f).is_file() for f in g.external_data)
    assert manifest.tokenizer.ids["<|cAUDIO|>"] == 151666 and manifest.tokenizer.audio_code_offset == 151671
    assert manifest.voices and all((art / d / "prompt_token.npy").is_file() for d in manifest.voices.values())
    bb = manifest.graphs["backbone"]
    assert bb.inputs[0].shape == ["batch", "sequence", 64] and bb.outputs[0].shape == ["batch", 168055]


def test_encoder_and_adapter_two_segments(tiny_chat, sessions):
    wav24 = audio.to_model_rate(torch.from_numpy(synthetic_utterance(35.0, 24000)), 24000)
    mel = audio.mel_segments(wav24)
    with torch.no_grad():
        hidden = tiny_chat.model.encoder(mel).last_hidden_state
        feats = tiny_chat.model.audio_adapter(hidden)
    ours_hidden = sessions["audio_encoder"].run(None, {"mel": mel.numpy()})[0]
    close(ours_hidden, hidden.numpy())
    ours_feats = sessions["audio_adapter"].run(None, {"hidden": hidden.numpy()})[0]
    assert ours_feats.shape == (2, 188, 64)
    close(ours_feats, feats.numpy())


def test_embed_tokens(tiny_chat, sessions):
    ids = np.array([[151644, 5, 151666, 168054]], dtype=np.int64)
    ref = tiny_chat.model.llm.get_input_embeddings().weight[torch.from_numpy(ids)].numpy()
    assert np.array_equal(sessions["embed_tokens"].run(None, {"input_ids": ids})[0], ref)


def _backbone_feeds(manifest, embeds, mask, positions, past):
    names = [t.name for t in manifest.graphs["backbone"].inputs]
    return dict(zip(names, [embeds, mask, positions, *past]))


def _empty_past(manifest, batch):
    llm = manifest.llm
    return [np.zeros((batch, llm.num_kv_heads, 0, llm.head_dim), np.float32) for _ in range(2 * llm.num_layers)]


def test_backbone_prefill_then_decode_equals_one_full_forward(tiny_chat, manifest, sessions):
    """Prefill n tokens (past 0), then k one-token steps on the returned cache: each step's logits
    equal the reference's logits at that position of one forward over the whole sequence."""
    n, k = 9, 5
    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((1, n + k, manifest.llm.hidden_size)).astype(np.float32)
    with torch.no_grad():
        ref = tiny_chat.model(torch.from_numpy(embeds), tiny_chat.model.new_cache(), last_only=False)[0].numpy()
    s = sessions["backbone"]
    out = s.run(None, _backbone_feeds(manifest, embeds[:, :n], np.ones((1, n), np.int64),
                                       np.arange(n)[None], _empty_past(manifest, 1)))
    close(out[0][0], ref[n - 1])
    for step in range(k):
        pos = n + step
        out = s.run(None, _backbone_feeds(manifest, embeds[:, pos : pos + 1], np.ones((1, pos + 1), np.int64),
                                           np.array([[pos]]), out[1:]))
        assert out[1].shape[2] == pos + 1
        close(out[0][0], ref[pos])


def test_backbone_batch_of_two_with_left_padding(manifest, sessions):
    """Batch 2: a left-padded short sequence gives the logits it gives alone."""
    rng = np.random.default_rng(1)
    h = manifest.llm.hidden_size
    a = rng.standard_normal((1, 6, h)).astype(np.float32)
    b = rng.standard_normal((1, 4, h)).astype(np.float32)
    s = sessions["backbone"]
    alone_a = s.run(None, _backbone_feeds(manifest, a, np.ones((1, 6), np.int64), np.arange(6)[None], _empty_past(manifest, 1)))[0]
    alone_b = s.run(None, _backbone_feeds(manifest, b, np.ones((1, 4), np.int64), np.arange(4)[None], _empty_past(manifest, 1)))[0]
    batch = np.concatenate([a, np.concatenate([np.zeros((1, 2, h), np.float32), b], 1)])
    mask = np.array([[1] * 6, [0, 0, 1, 1, 1, 1]], np.int64)
    positions = np.array([list(range(6)), [0, 0, 0, 1, 2, 3]], np.int64)
    both = s.run(None, _backbone_feeds(manifest, batch, mask, positions, _empty_past(manifest, 2)))[0]
    close(both[0], alone_a[0])
    close(both[1], alone_b[0])


def test_token2latent_graphs(tiny_chat, sessions):
    """The vector field in three graphs (codes -> conditioning once per turn, time -> modulation once per
    voice, the field per evaluation) gives the reference's velocity of both guidance rows."""
    t2l = tiny_chat.token2wav.token2latent
    rng = np.random.default_rng(2)
    codes = np.array([[3, 16383, 0, 77, 5000]], np.int64)
    t = 4 * codes.shape[1]
    cond = rng.standard_normal((1, t, 64)).astype(np.float32)
    x = rng.standard_normal((1, t, 64)).astype(np.float32)
    spk = tiny_chat.voice.speaker_embed[None]
    conditioning = sessions["token2latent_codes"].run(None, {"codes": codes, "latent_cond": cond})[0]
    modulation = sessions["token2latent_time"].run(None, {"t": np.array([0.25, 0.75], np.float32),
                                                          "speaker": np.concatenate([spk, spk])})[0]
    feeds = {"x": np.concatenate([x, x]), "conditioning": conditioning, "modulation": np.repeat(modulation[:1], 2, 0),
             "conv_context": np.zeros((2, 15, 64), np.float32), "position": np.array([0]),
             **{f"past_key_values.{i}.{p}": np.zeros((2, 4, 0, 16), np.float32) for i in range(2) for p in ("key", "value")}}
    velocity = sessions["token2latent_field"].run(["velocity"], feeds)[0]
    with torch.no_grad():
        feats = t2l.token_features(torch.from_numpy(codes))
        for row, tokens in enumerate((torch.zeros_like(feats), feats)):  # unconditional, then conditional
            ref = t2l.velocity(torch.from_numpy(x), torch.tensor([0.25]), tokens, torch.from_numpy(cond),
                               torch.from_numpy(spk)).numpy()
            close(velocity[row : row + 1], ref)
        close(modulation[1:], t2l.modulation(torch.tensor([0.75]), torch.from_numpy(spk)).numpy())


def test_the_field_with_a_cache_matches_the_reference(tiny_chat, sessions):
    """The streamed path of the field graph: new frames at a rotary offset, attending to cached keys and
    values of earlier frames and reading the position conv's left context, as the reference computes it."""
    t2l = tiny_chat.token2wav.token2latent
    rng = np.random.default_rng(4)
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    past = [f(2, 4, 9, 16) for _ in range(4)]
    inputs = (f(2, 6, 64), f(2, 6, 64), f(2, 896), f(2, 15, 64), np.array([9]))
    names = ["x", "conditioning", "modulation", "conv_context", "position"]
    kv = [f"past_key_values.{i}.{p}" for i in range(2) for p in ("key", "value")]
    ours = sessions["token2latent_field"].run(None, {**dict(zip(names, inputs)), **dict(zip(kv, past))})
    with torch.no_grad():
        ref = t2l.field(*(torch.from_numpy(a) for a in inputs), tuple(torch.from_numpy(p) for p in past))
    assert len(ours) == len(ref) == 2 + 4
    for a, b in zip(ours, ref):
        close(a, b.numpy())


@pytest.mark.parametrize("frames", [1, 17, 60])
def test_vocoder_length_and_parity(tiny_chat, sessions, frames):
    latents = np.random.default_rng(frames).standard_normal((1, 64, frames)).astype(np.float32)
    wav = sessions["vocoder"].run(None, {"latents": latents})[0]
    assert wav.shape == (1, 1, 240 * frames)
    with torch.no_grad():
        close(wav, tiny_chat.token2wav.wavegan(torch.from_numpy(latents)).numpy())


def test_failed_export_leaves_nothing(tiny_dir, tmp_path):
    import shutil

    from covo_edge.export.config import ReleaseError
    from covo_edge.export.exporter import export_release

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "token2wav" / "model.pt").write_bytes(b"garbage")
    with pytest.raises(ReleaseError, match="model.pt"):
        export_release(broken, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["broken"]


def _feeds(manifest, rng):
    """Real-shaped inputs for every graph (fp32; cast for fp16 graphs)."""
    llm, h = manifest.llm, manifest.llm.hidden_size
    past = [rng.standard_normal((1, llm.num_kv_heads, 6, llm.head_dim)).astype(np.float32)
            for _ in range(2 * llm.num_layers)]
    bb_names = [t.name for t in manifest.graphs["backbone"].inputs]
    mel = audio.mel_segments(audio.to_model_rate(torch.from_numpy(synthetic_utterance(4.0)), 16000)).numpy()
    return {
        "audio_encoder": {"mel": mel},
        "audio_adapter": {"hidden": rng.standard_normal((1, 1500, 64)).astype(np.float32)},
        "embed_tokens": {"input_ids": np.array([[151644, 9, 151666]], np.int64)},
        "backbone": dict(zip(bb_names, [rng.standard_normal((1, 4, h)).astype(np.float32), np.ones((1, 10), np.int64),
                                        np.arange(6, 10)[None], *past])),
        "token2latent_codes": {"codes": np.array([[1, 2, 3, 16000]], np.int64),
                               "latent_cond": rng.standard_normal((1, 16, 64)).astype(np.float32)},
        "token2latent_time": {"t": np.array([0.25, 0.5], np.float32), "speaker": rng.standard_normal((2, 64)).astype(np.float32)},
        "token2latent_field": {"x": rng.standard_normal((2, 16, 64)).astype(np.float32),
                               "conditioning": rng.standard_normal((2, 16, 64)).astype(np.float32),
                               "modulation": rng.standard_normal((2, 896)).astype(np.float32),
                               "conv_context": rng.standard_normal((2, 15, 64)).astype(np.float32),
                               "position": np.array([5]),
                               **{f"past_key_values.{i}.{p}": rng.standard_normal((2, 4, 5, 16)).astype(np.float32)
                                  for i in range(2) for p in ("key", "value")}},
        "vocoder": {"latents": rng.standard_normal((1, 64, 20)).astype(np.float32)},
    }


def test_fp16_export_runs_on_cpu_and_its_error_is_reported(tiny_art16, manifest, sessions):
    """Not a tight bound: fp16 error vs fp32 is printed for the note; gross breakage still fails."""
    m16 = Manifest.load(tiny_art16)
    assert m16.dtype == "float16"
    feeds = _feeds(manifest, np.random.default_rng(5))
    report = {}
    for name, feed in feeds.items():
        s16 = ort.InferenceSession(str(tiny_art16 / m16.graphs[name].file), providers=["CPUExecutionProvider"])
        kinds = {i.name: i.type for i in s16.get_inputs()}
        feed16 = {k: v.astype(np.float16) if kinds[k] == "tensor(float16)" else v for k, v in feed.items()}
        ref = sessions[name].run(None, feed)[0]
        out = s16.run(None, feed16)[0].astype(np.float32)
        assert out.shape == ref.shape and np.isfinite(out).all()
        rel = float(np.abs(out - ref).max() / np.abs(ref).max())
        report[name] = rel
        assert rel < 0.05, f"{name}: fp16 max error {rel:.3g} of max |fp32|"
    print("fp16 vs fp32 max abs error / max |fp32|:", {k: f"{v:.2e}" for k, v in report.items()})


def test_manifest_profiles_are_self_consistent(manifest):
    """Every backbone profile keeps past + sequence = total at min, opt and max."""
    for p in manifest.graphs["backbone"].profiles:
        for k in range(3):
            assert p["past_sequence"][k] + p["sequence"][k] == p["total_sequence"][k]
    assert max(p["total_sequence"][2] for p in manifest.graphs["backbone"].profiles) == manifest.llm.max_context


def test_export_ships_the_voices_asked_for(tiny_dir, tiny_art, manifest):
    """The session artifacts were exported with `--voice prompt --voice long`: both voices, in that order
    (the first is the default), each the release's prompt files."""
    assert list(manifest.voices) == TINY_VOICES
    for name in TINY_VOICES:
        for f in ("prompt_token.npy", "prompt_latent.npy", "speaker_embed.npy"):
            assert np.array_equal(np.load(tiny_art / manifest.voices[name] / f),
                                  np.load(tiny_dir / "token2wav" / name / f)), (name, f)


def test_a_graph_exports_byte_identical_and_carries_no_path_of_this_machine(tiny_dir, tiny_art, tmp_path):
    """The adapter exported twice more, elsewhere, gives the session export's very bytes; no graph carries a
    path of this machine, so a checksum identifies the model."""
    import sys

    from conftest import REPO
    from covo_edge.export.exporter import export_graph
    from covo_edge.export.graphs import audio_adapter
    from covo_edge.export.release import Release, load_covo

    model = load_covo(Release.open(tiny_dir), torch.float32)
    for where in ("a", "b/c"):
        (tmp_path / where).mkdir(parents=True)
        spec = export_graph(audio_adapter.graph(model), tmp_path / where)
        for f in (spec.file, *spec.external_data):
            assert (tmp_path / where / f).read_bytes() == (tiny_art / f).read_bytes(), f
    for f in tiny_art.glob("*.onnx"):
        data = f.read_bytes()
        assert str(REPO).encode() not in data and sys.prefix.encode() not in data and b"stack_trace" not in data, f


def test_force_replaces_an_earlier_export_only(tiny_dir, tiny_art, tmp_path, monkeypatch):
    """--force over an earlier export: the folder is replaced whole (nothing of the old one stays); over a
    folder that no export wrote, it refuses and leaves it alone. One graph stands in for the whole export."""
    import shutil

    from covo_edge.export import exporter
    from covo_edge.export.graphs import audio_adapter
    from covo_edge.export.release import load_covo
    from covo_edge.runtime.cli import main

    def one_graph(release, out, dtype, voices, max_context, quiet):
        exporter.export_graph(audio_adapter.graph(load_covo(release, dtype)), out)

    monkeypatch.setattr(exporter, "_export", one_graph)
    again = tmp_path / "again"
    shutil.copytree(tiny_art, again)
    (again / "left_from_before.txt").write_text("x")
    assert main(["export", str(tiny_dir), "-o", str(again)]) == 2  # an existing export needs --force
    assert main(["export", str(tiny_dir), "-o", str(again), "--force"]) == 0
    assert sorted(p.name for p in again.iterdir() if p.name != ".covo-edge") == ["audio_adapter.onnx",
                                                                               "audio_adapter.onnx.data"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert main(["export", str(tiny_dir), "-o", str(foreign), "--force"]) == 2
    assert (foreign / "notes.txt").read_text() == "keep"
