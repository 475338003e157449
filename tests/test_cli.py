"""The console script: make-tiny and demo end to end, and a runtime that never loads torch."""

import subprocess
import sys

import pytest
import soundfile as sf


def run(*args, check=True):
    return subprocess.run([sys.executable, "-m", "covo_edge.runtime.cli", *args], capture_output=True, text=True, check=check)


def test_runtime_imports_without_torch():
    code = (
        "import sys, importlib, pkgutil\n"
        "import covo_edge.runtime as rt\n"
        "for m in pkgutil.walk_packages(rt.__path__, rt.__name__ + '.'): importlib.import_module(m.name)\n"
        "from covo_edge.runtime.cli import build_parser; build_parser()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_make_tiny_then_demo(tmp_path):
    pytest.importorskip("torch")
    out = run("make-tiny", str(tmp_path / "tiny"), "--seed", "1")
    assert "wrote a random-weight tiny release" in out.stdout
    wav_path = tmp_path / "reply.wav"
    demo = run("demo", "--model-dir", str(tmp_path / "tiny"), "--output", str(wav_path))
    assert "timings_ms" in demo.stdout and "audio codes" in demo.stdout
    info = sf.info(str(wav_path))
    assert info.samplerate == 24000 and info.frames % 240 == 0


def test_cli_errors_are_one_line(tmp_path):
    pytest.importorskip("torch")
    bad = run("demo", "--model-dir", str(tmp_path / "missing"), check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "not a directory" in bad.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    again = run("make-tiny", str(tmp_path / "full"), check=False)
    assert again.returncode == 2 and "not empty" in again.stderr
