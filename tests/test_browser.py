"""The page `covo-edge serve` serves, used as a person would: a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium) with a fake microphone playing a wav file, against the tiny model.
What the page measured (window.covoStats) is checked against the server's own log of the same turn."""

import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import needs
from serving import Server

needs("torch", "export")
needs("uvicorn", "serve")
needs("selenium", "dev")

CHROMIUM, DRIVER = Path("/usr/lib/chromium/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and DRIVER.exists()):
    pytest.skip("needs Chromium: apt-get install chromium chromium-driver", allow_module_level=True)

RATE = 24000


def speech(*parts: tuple[str, float]) -> np.ndarray:
    """("silence" | "speech", seconds) pieces at 24 kHz; each speech piece a different synthetic voice."""
    from covo_edge.runtime.synthetic import synthetic_utterance

    out = [np.zeros(int(s * RATE), np.float32) if kind == "silence" else synthetic_utterance(s, RATE, seed=k)
           for k, (kind, s) in enumerate(parts)]
    return np.concatenate(out)


@pytest.fixture(scope="module")
def server(tiny_art, tmp_path_factory):
    s = Server(tiny_art, "--seed", "0", log=tmp_path_factory.mktemp("serve") / "serve.log")
    yield s
    s.stop()


class Page:
    """The page in headless Chromium, its microphone the given wav (played once)."""

    def __init__(self, url: str, wav: Path):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in ("--headless", "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                     f"--use-file-for-fake-audio-capture={wav}%noloop", "--autoplay-policy=no-user-gesture-required",
                     "--window-size=1000,800"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
        self.driver.get(url)

    def stats(self) -> dict:
        return self.driver.execute_script("return window.covoStats")

    def wait(self, what: str, condition, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if condition(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never got to {what}: {stats}")
            time.sleep(0.1)

    def close(self) -> None:
        self.driver.quit()


def open_page(server: Server, wav: Path, max_output_tokens: int, *parts: tuple[str, float]) -> Page:
    """The page with `parts` as its microphone, replies capped at max_output_tokens."""
    sf.write(wav, speech(*parts), RATE, subtype="PCM_16")
    return Page(f"http://127.0.0.1:{server.port}/?max_output_tokens={max_output_tokens}", wav)


def logged(server: Server, response: str) -> dict:
    """The server's log line of one turn, parsed."""
    line = next(x for x in server.log.read_text().splitlines() if f"turn {response}:" in x)
    m = re.search(r"first audio (\d+ms|-), (\d+) tokens, audio sent ([\d.]+)s, rtf [\d.-]+, (\w+)", line)
    assert m, line
    return {"first_audio_ms": None if m[1] == "-" else int(m[1][:-2]), "tokens": int(m[2]),
            "audio_sent": float(m[3]), "status": m[4]}


def test_the_page_hears_a_question_and_plays_the_reply(server, tmp_path):
    page = open_page(server, tmp_path / "question.wav", 120, ("silence", 0.5), ("speech", 2.0), ("silence", 4.0))
    try:
        page.driver.find_element("id", "start").click()
        stats = page.wait("a finished reply", lambda s: s["turns"])
        turn = stats["turns"][0]
        stats = page.wait("the reply played", lambda s: s["played"] >= turn["received"] > 0, 30)
        page.driver.save_screenshot(str(tmp_path / "page.png"))
        assert stats["state"] == "connected" and not stats["errors"]
        assert stats["captured"] > RATE and stats["capturedRms"] > 0.01  # a wrong capture path gives silence
        assert turn["text"].strip() and turn["text"].strip() in page.driver.find_element("id", "transcript").text
        log = logged(server, turn["response"])
        assert log["status"] == turn["status"]
        assert turn["received"] == round(log["audio_sent"] * RATE)
        assert abs(turn["server"]["first_audio_ms"] - log["first_audio_ms"]) <= 1
        heard = turn["first_audio_heard_ms"]  # from speech_stopped reaching the page to the first sample played
        assert log["first_audio_ms"] - 20 <= heard <= log["first_audio_ms"] + 1000
        assert (tmp_path / "page.png").stat().st_size > 10_000
    finally:
        page.close()


def test_speaking_over_the_reply_stops_it_truncates_it_and_gets_the_next(server, tmp_path):
    page = open_page(server, tmp_path / "barge_in.wav", 1000, ("silence", 0.5), ("speech", 2.0), ("silence", 4.0),
                     ("speech", 1.5), ("silence", 4.0))
    try:
        page.driver.find_element("id", "start").click()
        stats = page.wait("a second reply", lambda s: len(s["turns"]) >= 2 and s["truncates"], 180)
        page.driver.save_screenshot(str(tmp_path / "barge_in.png"))
        first, second = stats["turns"][:2]
        assert first["status"] == "cancelled" and second["status"] in ("completed", "incomplete")
        truncate = stats["truncates"][0]
        assert truncate["item"] == first["item"]
        played = stats["playedByItem"].get(first["item"], 0)
        assert truncate["audio_end_ms"] == 1000 * played // RATE <= truncate["received_ms"]  # what was heard
        assert second["text"]
        assert logged(server, first["response"])["status"] == "cancelled"
    finally:
        page.close()


def test_push_to_talk_sends_only_while_held_and_answers_on_release(server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    page = open_page(server, tmp_path / "ptt.wav", 60, ("silence", 0.3), ("speech", 2.0), ("silence", 5.0))
    try:
        page.driver.find_element("css selector", "input[value=ptt]").click()
        page.driver.find_element("id", "start").click()
        page.wait("a connection", lambda s: s["state"] == "connected", 30)
        ActionChains(page.driver).key_down(Keys.SPACE).perform()
        time.sleep(2.5)
        ActionChains(page.driver).key_up(Keys.SPACE).perform()
        # the microphone keeps capturing after the release: wait for more than was held, however fast the reply
        stats = page.wait("a reply", lambda s: s["turns"] and s["captured"] > 3.5 * RATE)
        turn = stats["turns"][0]
        assert turn["status"] == "incomplete" and turn["text"] and turn["first_audio_heard_ms"] is not None
        assert 2.0 * RATE <= stats["sent"] <= 3.5 * RATE < stats["captured"], stats  # sent while held only
        assert logged(server, turn["response"])["status"] == "incomplete"
        assert not stats["errors"]
    finally:
        page.close()


def test_a_busy_server_says_so_and_reconnect_gets_in(tiny_art, tmp_path):
    from serving import Client

    s = Server(tiny_art, "--max-sessions", "1", log=tmp_path / "serve.log")
    holder = Client(s.url)
    page = open_page(s, tmp_path / "quiet.wav", 8, ("silence", 30.0))
    try:
        page.driver.find_element("id", "start").click()
        page.wait("the busy message", lambda st: st["state"] == "disconnected" and st["errors"], 30)
        assert "busy" in page.driver.find_element("id", "error").text
        assert page.driver.find_element("id", "reconnect").is_displayed()
        holder.close()
        deadline = time.monotonic() + 10
        while s.health()["sessions"] and time.monotonic() < deadline:
            time.sleep(0.05)
        page.driver.find_element("id", "reconnect").click()
        page.wait("a connection", lambda st: st["state"] == "connected" and not st["errors"], 30)
        assert not page.driver.find_element("id", "error").is_displayed()
    finally:
        page.close()
        s.stop()
