"""Headless Chromium for the tests of the HTML pages (the error page, the data memo): layout is checked in a real
browser - bounding boxes, media metadata, computed styles - not by reading the HTML.

Debian's ``chromium`` + ``chromium-driver`` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``; .ci/run installs
them) driven by selenium (the test extra). Selenium is given both paths, so its driver manager never downloads
anything. A test that needs the browser uses :func:`chromium` (a context manager) or the ``browser`` fixture a
module builds from it; both skip, with the reason, only when the browser or its driver is absent.

Usage::

    with chromium() as driver:
        open_page(driver, path)
        wait_until(driver, "return document.readyState === 'complete'")
        boxes = driver.execute_script("return [...document.querySelectorAll('.clip')].map(...)")
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

WIDTH, HEIGHT = 1400, 1000
# the flags of the brief: no sandbox (containers), no GPU, no network chatter, a fresh profile each run
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--mute-audio")


def chromium_paths() -> tuple[str, str] | str:
    """``(chromium, chromedriver)``, or why the browser tests cannot run here."""
    browser = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not browser or not driver:
        missing = " and ".join(name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path)
        return f"{missing} not found (apt-get install chromium chromium-driver; .ci/run installs them)"
    return browser, driver


@contextmanager
def chromium(width: int = WIDTH, height: int = HEIGHT) -> Iterator:
    """A headless Chromium WebDriver with a ``width`` x ``height`` window and a fresh profile, quit on exit (the
    profile folder removed). Skips the test when chromium or chromedriver is absent."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if isinstance(paths, str):
        pytest.skip(paths)
    browser, driver_path = paths
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path: Path) -> None:
    """Load a local HTML file and wait until its document is complete."""
    driver.get(Path(path).resolve().as_uri())
    wait_until(driver, "return document.readyState === 'complete'")


def wait_until(driver, script: str, timeout: float = 15.0, every: float = 0.05):
    """Run ``script`` (JavaScript with a ``return``) until its value is truthy; return that value. Fails the test
    naming the script when ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"browser: still false after {timeout:.0f} s: {script}")
        time.sleep(every)
