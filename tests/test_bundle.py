"""The desktop build: `python -m covo_edge.desktop.build` (PyInstaller, one folder), and the frozen program
run with an empty environment: `check` and a `chat` turn on the tiny artifacts, `serve` answering /healthz and
stopping cleanly on SIGTERM, and the app itself serving its page."""

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from conftest import needs
from serving import free_port

needs("torch", "export")  # the tiny artifacts
needs("PyInstaller", "bundle")
pytestmark = pytest.mark.slow  # a PyInstaller build: about a minute on 2 cores


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("bundle")
    out = subprocess.run([sys.executable, "-m", "covo_edge.desktop.build", "--dist", str(d / "dist"), "--work",
                          str(d / "build")], capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout[out.stdout.index("{"):])


def frozen(bundle: dict, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([bundle["program"], *map(str, args)], env={}, capture_output=True, text=True, timeout=300,
                          **kwargs)


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)


def test_the_build_holds_the_runtime_side_only(bundle):
    from pathlib import Path

    folder = Path(bundle["folder"])
    names = {p.name for p in (folder / "_internal").iterdir()}
    assert not names & {"torch", "transformers", "onnx", "tensorrt_rtx", "modelopt", "ray"}
    assert (folder / "_internal" / "covo_edge" / "server" / "assets" / "silero_vad.onnx").is_file()
    assert (folder / "_internal" / "covo_edge" / "server" / "page" / "app.js").is_file()


def test_the_frozen_program_checks_and_chats(bundle, tiny_art, tmp_path):
    from covo_edge.runtime.synthetic import synthetic_utterance

    check = frozen(bundle, "check", tiny_art)
    assert check.returncode == 0 and "all checks passed" in check.stdout, check.stderr
    sf.write(tmp_path / "q.wav", synthetic_utterance(1.5, 24000), 24000, subtype="PCM_16")
    chat = frozen(bundle, "chat", tiny_art, "--input", tmp_path / "q.wav", "--output-dir", tmp_path / "out",
                  "--max-new-tokens", "40")
    assert chat.returncode == 0, chat.stderr
    wav, rate = sf.read(tmp_path / "out" / "turn_0.wav")
    assert rate == 24000 and len(wav) > 0 and np.isfinite(wav).all()
    assert (tmp_path / "out" / "turn_0.txt").read_text()


def test_the_frozen_server_answers_and_stops_on_sigterm(bundle, tiny_art):
    port = free_port()
    proc = subprocess.Popen([bundle["program"], "serve", str(tiny_art), "--port", str(port)], env={},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        health = json.loads(wait_for(f"http://127.0.0.1:{port}/healthz", proc))
        assert health["status"] == "ok" and health["voices"] == ["prompt", "long"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_the_app_serves_its_page_on_a_free_port(bundle, tiny_art):
    proc = subprocess.Popen([bundle["program"], str(tiny_art), "--no-browser"], env={}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            m = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
            if m:
                break
        assert m, "the app never said where it serves"
        page = wait_for(m[1], proc)
        assert "covo-edge" in page and "/page/app.js" in page
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
