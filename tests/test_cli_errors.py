"""Every bad input to the command line: one line on stderr naming the problem, exit status 2, nothing
written (no output folder created, no partial file). Run in-process through `main`, as the console
script does; a few cases that need a fresh process (a real full-disk error) run as subprocesses."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import cli, needs
from covo_edge.runtime.synthetic import synthetic_utterance

needs("torch", "export")

CODES = 151671  # first audio code id
FORCED = [11, CODES + 5, CODES + 6, CODES + 7, 12]  # a reply with text and three audio codes


def refused(capsys, *args, expect: str) -> str:
    rc, _, err = cli(capsys, *args)
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert expect in err, err
    return err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    sf.write(d / "q.wav", synthetic_utterance(1.0), 16000)
    np.save(d / "forced.npy", np.array(FORCED))
    np.save(d / "text_only.npy", np.array([11, 12, 13]))
    for name, codes in {"float": np.array([1.0, 2.0]), "2d": np.array([[1, 2]]), "negative": np.array([3, -1]),
                        "big": np.array([3, 16384, 20000]), "empty": np.array([], np.int64),
                        "ok": np.array([1, 2, 3])}.items():
        np.save(d / f"codes_{name}.npy", codes)
    (d / "a_file").write_text("x")
    (d / "a_dir").mkdir()
    return d


@pytest.mark.parametrize(
    "case,expect",
    [
        ("missing", "cannot read audio"),
        ("a_dir", "it is a directory"),
        ("not_audio", "cannot read audio"),
        ("empty", "empty"),
        ("silent", "silent"),
        ("nan", "NaN"),
        ("one_sample", "too short"),
        ("stereo48k", None),
        ("long40s", None),
    ],
)
def test_bad_audio_gets_one_clear_line(tiny_art, files, tmp_path, capsys, case, expect):
    path = tmp_path / f"{case}.wav"
    if case == "a_dir":
        path.mkdir()
    elif case == "not_audio":
        path.write_text("hello")
    elif case == "empty":
        sf.write(path, np.zeros(0, np.float32), 16000)
    elif case == "silent":
        sf.write(path, np.zeros(16000, np.float32), 16000)
    elif case == "nan":
        sf.write(path, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    elif case == "one_sample":
        sf.write(path, np.full(1, 0.1, np.float32), 16000)
    elif case == "stereo48k":
        sf.write(path, np.stack([synthetic_utterance(1.0, 48000), synthetic_utterance(1.0, 48000, seed=3)], 1), 48000)
    elif case == "long40s":
        sf.write(path, synthetic_utterance(40.0, 16000), 16000)
    out = tmp_path / "out"
    args = ("chat", tiny_art, "--input", path, "--output-dir", out, "--force-tokens", files / "forced.npy")
    if expect is None:  # documented behaviour: stereo is averaged, > 30 s runs as several encoder windows
        rc, _, err = cli(capsys, *args)
        assert rc == 0, err
        assert (out / "turn_0.wav").is_file()
    else:
        refused(capsys, *args, expect=expect)
        assert not out.exists()


def test_a_bad_second_input_is_found_before_the_first_turn(tiny_art, files, tmp_path, capsys):
    sf.write(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000)
    out = tmp_path / "out"
    refused(capsys, "chat", tiny_art, "--input", files / "q.wav", "--input", tmp_path / "silent.wav", "--output-dir",
            out, expect=f"{tmp_path / 'silent.wav'}: audio is silent")
    assert not out.exists()


@pytest.mark.parametrize(
    "extra,expect",
    [
        (["--max-new-tokens", "-3"], "argument --max-new-tokens: must be an integer of at least 1, got '-3'"),
        (["--max-new-tokens", "0"], "at least 1"),
        (["--seed", "-1"], "argument --seed: must be an integer of at least 0"),
        (["--seed", "x"], "argument --seed: must be an integer"),
        (["--dump-logits", "0"], "argument --dump-logits"),
        (["--mode", "song"], "argument --mode: invalid choice"),
        (["--device", "tpu"], "argument --device: invalid choice"),
        (["--force-tokens", "{files}/forced.npy", "--force-tokens", "{files}/forced.npy"],
         "--force-tokens takes one file per --input (1), got 2"),
        (["--force-tokens", "{files}/codes_float.npy"], "must be a non-empty 1-D array of integer ids"),
        (["--force-tokens", "{files}/q.wav"], "is not a .npy file of forced tokens"),
        (["--noise", "{files}/codes_ok.npy"], "ODE noise must be finite floats [1, frames, 64]"),
        (["--voice", "nobody"], "unknown voice 'nobody'; available: prompt"),
        (["--output-dir", "{files}/a_file"], "it is a file; choose another --output-dir"),
        (["--output-dir", "{files}/a_file/sub"], "lies under"),
        (["--dump", "{files}/a_dir"], "cannot write --dump"),
        (["--dump", "{files}/a_file/d.npz"], "is a file, not a directory"),
    ],
)
def test_bad_chat_options(tiny_art, files, tmp_path, capsys, extra, expect):
    out = tmp_path / "out"
    args = ["chat", tiny_art, "--input", files / "q.wav", "--output-dir", out]
    refused(capsys, *args, *[e.format(files=files) for e in extra], expect=expect)
    assert not out.exists()


@pytest.mark.parametrize(
    "codes,expect",
    [
        ("float", "must be integers, got float64 (save them as int64)"),
        ("2d", "must be 1-D [N], got shape (1, 2)"),
        ("negative", "code -1 at index 1 is outside 0..16383"),
        ("big", "code 16384 at index 1 is outside 0..16383 (2 codes in all)"),
        ("empty", "holds no codes"),
        ("missing", "cannot read audio codes"),
    ],
)
def test_token2wav_checks_the_codes(tiny_art, files, tmp_path, capsys, codes, expect):
    refused(capsys, "token2wav", tiny_art, "--codes", files / f"codes_{codes}.npy", "-o", tmp_path / "x.wav",
            expect=expect)
    assert list(tmp_path.iterdir()) == []


def test_token2wav_output_is_a_directory(tiny_art, files, capsys):
    refused(capsys, "token2wav", tiny_art, "--codes", files / "codes_ok.npy", "-o", files / "a_dir",
            expect="it is a directory; give a file name")


@pytest.mark.parametrize(
    "damage,expect",
    [
        ("no_dir", "does not exist: pass a directory written by `covo-edge export`"),
        ("no_manifest", "has no manifest.json"),
        ("bad_json", "is not valid JSON"),
        ("old_schema", "has schema version 1, this covo-edge reads 3: re-export"),
        ("no_tokenizer", "tokenizer.json: missing"),
        ("truncated", "backbone.onnx.data: 100 bytes, the manifest says"),
    ],
)
def test_broken_artifacts(tiny_art, files, tmp_path, capsys, damage, expect):
    art = tmp_path / "art"
    if damage != "no_dir":
        shutil.copytree(tiny_art, art)
    manifest = art / "manifest.json"
    if damage == "no_manifest":
        manifest.unlink()
    elif damage == "bad_json":
        manifest.write_text("{ not json")
    elif damage == "old_schema":
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "schema_version": 1}))
    elif damage == "no_tokenizer":
        (art / "tokenizer.json").unlink()
    elif damage == "truncated":
        (art / "backbone.onnx.data").write_bytes(b"\0" * 100)
    refused(capsys, "chat", art, "--input", files / "q.wav", "--output-dir", tmp_path / "out", expect=expect)
    assert not (tmp_path / "out").exists()


def test_a_speech_reply_without_codes_writes_no_wav(tiny_art, files, tmp_path, capsys):
    """Status 1 and a line saying so; the text is still written, no empty wav is."""
    out = tmp_path / "out"
    rc, stdout, err = cli(capsys, "chat", tiny_art, "--input", files / "q.wav", "--output-dir", out,
                          "--force-tokens", files / "text_only.npy")
    assert rc == 1 and "turn 0's reply holds no audio codes" in err and len(err.strip().splitlines()) == 1
    assert (out / "turn_0.txt").is_file() and not (out / "turn_0.wav").exists()
    assert "(3 text ids, 0 audio codes, length)" in stdout


def test_permission_denied_is_one_line(tiny_art, files, tmp_path, capsys, monkeypatch):
    """(Root ignores file modes, so the OS's answer is stood in for by os.access.)"""
    import os

    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    refused(capsys, "chat", tiny_art, "--input", files / "q.wav", "--output-dir", tmp_path / "out",
            expect="permission denied")


def test_a_full_disk_leaves_no_partial_file(tiny_art, files, tmp_path):
    """A real OS error mid-write: the file-size limit makes every write past 20 kB fail (EFBIG), as a
    full disk would (ENOSPC); the turn's wav is not left half-written and the message is one line."""
    out = tmp_path / "out"
    code = (
        "import resource, sys\n"
        "from covo_edge.runtime.cli import main\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        f"sys.exit(main(['chat', {str(tiny_art)!r}, '--input', {str(files / 'q.wav')!r}, '--output-dir', {str(out)!r},"
        f" '--force-tokens', {str(files / 'forced.npy')!r}, '--dump', {str(tmp_path / 'd.npz')!r}]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [f"covo-edge chat: cannot write {tmp_path / 'd.npz'}: File too large"]
    assert not (tmp_path / "d.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp file left beside it
    assert sorted(p.name for p in out.iterdir()) == ["turn_0.txt", "turn_0.wav"]  # the turn itself fit


def test_export_refuses_to_overwrite(tiny_dir, tiny_art, tmp_path, capsys):
    refused(capsys, "export", tiny_dir, "-o", tiny_art, expect="exists (an earlier `covo-edge export`): pass --force")
    refused(capsys, "export", tiny_dir, "-o", tiny_dir, "--force", expect="was not written by `covo-edge export`")
    refused(capsys, "export", tiny_dir, "-o", tmp_path / "a", "--max-context", "10",
            expect="--max-context must be between 256")
    refused(capsys, "make-tiny", tiny_art, "--force", expect="was not written by `covo-edge make-tiny`")
    assert list(tmp_path.iterdir()) == []
