"""The labelling web app (``python -m pipelines.label --class CODE``, reports/label_app.py) as a user meets it: the
server runs as a real subprocess on a copy of the embedded demo store and a real headless Chromium drives the page -
spectrograms and 5-s clips load and play, mouse and keyboard labels are stored before the page shows them (read back
with featurestore.user_labels.current_labels), a reload shows them, a ``kill -9`` of the server loses no shown label
and the restarted server resumes the session, the next page after a positive and a negative is the probe's (with
boundary windows), undo reverts a click, and Ctrl-C ends the job with exit 130 and its one line.

One store copy and one server (restarted once, on the same port) for the whole module; the tests run in order and
share that session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from browser import chromium, wait_until

from featurestore.store import FeatureStore
from featurestore.user_labels import current_labels

CLASS = "banana"
ANNOTATOR = "tester"
PAGE_SIZE = 12          # models.probe.ProbeParams().page_size


class Server:
    """``python -m pipelines.label --class banana`` as a subprocess; its output lines collected by a thread."""

    def __init__(self, store: Path):
        self.store = store
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []        # stdout
        self.errors: list[str] = []       # stderr
        self.port = 0
        self.url = ""

    def start(self) -> str:
        cmd = [sys.executable, "-m", "pipelines.label", "--store", str(self.store), "--class", CLASS,
               "--annotator", ANNOTATOR, "--port", str(self.port)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=Path(__file__).resolve().parents[2])
        self.lines, self.errors = [], []
        threading.Thread(target=self._read, args=(self.proc.stderr, self.errors), daemon=True).start()
        first = self.proc.stdout.readline()
        assert "http://127.0.0.1:" in first, f"the URL is not the first line: {first!r} {self.errors}"
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()
        self.url = "http://" + first.split("http://", 1)[1].split()[0]
        self.port = int(self.url.rstrip("/").rsplit(":", 1)[1])
        self.lines.append(first.rstrip("\n"))
        return self.url

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def round_lines(self) -> list[str]:
        return [x for x in self.lines if x.startswith("round ") and " labelled (" in x]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def store(demo_embedded_store, store_copy) -> Path:
    return store_copy(demo_embedded_store, "label_app")


@pytest.fixture(scope="module")
def server(store):
    s = Server(store)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def stored(store: Path) -> dict[str, str]:
    """The annotator's current labels of the class, read from the store (window id -> label)."""
    with FeatureStore.open(store, create=False, read_only=True) as s:
        rows = current_labels(s).to_pylist()
    return {r["window_id"]: r["label"] for r in rows if r["primary_label"] == CLASS and r["annotator"] == ANNOTATOR}


def load(driver, url: str) -> None:
    driver.get(url)
    wait_until(driver, "return document.readyState === 'complete' && document.querySelectorAll('.card').length > 0",
               timeout=60)


def cards(driver) -> list[dict]:
    return driver.execute_script(
        "return [...document.querySelectorAll('.card')].map(c => ({window: c.dataset.window, why: c.dataset.why, "
        "label: c.dataset.label, shown: c.querySelector('.current b').textContent, "
        "on: [...c.querySelectorAll('.lab.on')].map(b => b.dataset.label)}))")


def key(driver, text: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(text).perform()


def wait_label(driver, i: int, label: str) -> None:
    wait_until(driver, f"return document.querySelectorAll('.card')[{i}].dataset.label === {label!r}")


def test_page_shows_media_scores_and_shortcuts_offline(server, browser):
    load(browser, server.url)
    got = cards(browser)
    assert len(got) == PAGE_SIZE and len({c["window"] for c in got}) == PAGE_SIZE
    assert {c["why"] for c in got} == {"search"} and all(c["label"] == "" for c in got)
    # every spectrogram decoded, every clip is 5 s long
    wait_until(browser, "return [...document.images].every(i => i.complete && i.naturalWidth > 100)", timeout=60)
    durations = wait_until(browser, "const a = [...document.querySelectorAll('audio')]; "
                                    "return a.every(x => x.readyState >= 1) && a.map(x => x.duration)", timeout=60)
    assert len(durations) == PAGE_SIZE and all(abs(d - 5.0) < 0.05 for d in durations), durations
    # space plays the selected window's clip: its time advances
    key(browser, " ")
    wait_until(browser, "return document.querySelectorAll('audio')[0].currentTime > 0.2", timeout=20)
    key(browser, " ")
    assert browser.execute_script("return document.querySelectorAll('audio')[0].paused")
    # the shortcuts are on the page; the round line at the top is the one the terminal printed
    keys = browser.find_element("id", "keys").text
    for word in ("positive", "negative", "uncertain", "undo", "next page", "space"):
        assert word in keys
    top = browser.find_element("id", "round-line").text
    assert top.startswith("round 0: 0 labelled") and top in server.round_lines()
    # offline: the page loaded nothing from any other origin
    origins = browser.execute_script("return [...new Set(performance.getEntriesByType('resource')"
                                     ".map(e => new URL(e.name).origin))]")
    assert set(origins) <= {server.url.rstrip("/")}, origins


def test_mouse_and_keyboard_labels_are_stored_and_shown_after_reload(server, store, browser):
    first = cards(browser)
    browser.find_elements("css selector", ".card")[0].find_element("css selector", ".lab.positive").click()
    wait_label(browser, 0, "positive")
    browser.execute_script("document.querySelectorAll('.card')[0].click()")   # select card 0, then j moves to 1
    key(browser, "j")
    key(browser, "n")
    wait_label(browser, 1, "negative")
    assert browser.find_element("id", "error").get_attribute("hidden") is not None
    assert stored(store) == {first[0]["window"]: "positive", first[1]["window"]: "negative"}
    browser.refresh()
    load(browser, server.url)
    got = cards(browser)
    assert [c["window"] for c in got] == [c["window"] for c in first]
    assert [(c["label"], c["shown"], c["on"]) for c in got[:3]] == [
        ("positive", "positive", ["positive"]), ("negative", "negative", ["negative"]), ("", "none", [])]
    assert any(x.startswith("positive") and first[0]["window"] in x for x in server.lines)


def test_a_refused_write_shows_an_error_and_stores_nothing(store, browser):
    before = stored(store)
    # a window id the store does not have: the server refuses the click, the page says so and keeps the old label
    browser.execute_script("document.querySelectorAll('.card')[2].dataset.window = 'train_soundscapes/nope.ogg@0'")
    browser.find_elements("css selector", ".card")[2].find_element("css selector", ".lab.positive").click()
    text = wait_until(browser, "const e = document.getElementById('error'); return !e.hidden && e.textContent")
    assert text.startswith("NOT stored: positive for train_soundscapes/nope.ogg@0")
    assert cards(browser)[2]["label"] == "" and stored(store) == before


def test_kill_9_loses_nothing_and_the_restarted_server_resumes(server, store, browser):
    before = stored(store)
    assert len(before) == 2
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    # a click while the server is down: the page says it was not stored
    browser.find_elements("css selector", ".card")[3].find_element("css selector", ".lab.negative").click()
    text = wait_until(browser, "const e = document.getElementById('error'); return !e.hidden && e.textContent")
    assert "NOT stored" in text and "unreachable" in text
    assert stored(store) == before
    url = server.url
    assert server.start() == url                     # the same port: the open tab goes on
    load(browser, url)
    top = browser.find_element("id", "round-line").text
    # round 1 (the labels were given in round 0), built by the probe from the stored positive and negative
    assert top.startswith("round 1: 2 labelled (1 positive, 1 negative, 0 uncertain)"), top
    assert top in server.round_lines()
    got = cards(browser)
    assert not {c["window"] for c in got} & set(before)          # labelled windows are not shown again
    assert {c["why"] for c in got} >= {"margin", "top"}
    assert stored(store) == before


def test_next_page_retrains_and_undo_reverts(server, store, browser):
    before = stored(store)
    page1 = cards(browser)
    browser.execute_script("document.querySelectorAll('.card')[0].click()")
    key(browser, "p")
    wait_label(browser, 0, "positive")
    key(browser, "u")                                # moved to card 1 after the first label
    wait_label(browser, 1, "uncertain")
    key(browser, "z")
    wait_label(browser, 1, "")
    assert stored(store) == {**before, page1[0]["window"]: "positive"}     # the undone click is cleared
    key(browser, "\ue007")                           # Enter: next page
    wait_until(browser, "return document.getElementById('round-line').textContent.startsWith('round 2:')",
               timeout=60)
    load(browser, server.url)
    top = browser.find_element("id", "round-line").text
    assert top.startswith("round 2: 3 labelled (2 positive, 1 negative, 0 uncertain)"), top
    assert "last page precision 1.00" in top and top in server.round_lines()
    got = cards(browser)
    assert "margin" in {c["why"] for c in got}
    assert not {c["window"] for c in got} & set(stored(store))


def test_refused_before_serving(server, store):
    """An unknown class, a port in use and serve-only options with --export: one clear refusal, nothing served."""
    from featurestore.errors import UserInputError
    from pipelines.label import main

    with pytest.raises(UserInputError, match="--class 'nope' is not in the store's taxonomy"):
        main(["--store", str(store), "--class", "nope", "--port", "0"])
    with pytest.raises(UserInputError, match=f"port {server.port} on 127.0.0.1 is in use.*--port 0"):
        main(["--store", str(store), "--class", CLASS, "--port", str(server.port)])
    with pytest.raises(SystemExit) as exc:
        main(["--store", str(store), "--export", "csv", "--out", str(store.parent / "x.csv"), "--port", "0"])
    assert exc.value.code == 2 and not (store.parent / "x.csv").exists()


def test_ctrl_c_stops_with_one_line_and_exit_130(server):
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(20) == 130
    time.sleep(0.2)
    assert server.errors[-1] == "stopped; every click is already stored (run the same command again to go on labelling)"

