"""Save a screenshot of the labelling web app (``python -m pipelines.label --class CODE``) for the README.

Copies the store to a temporary folder (the clicks made for the picture never reach the given store), starts the
app there on a free port, opens it in headless Chromium (Debian's chromium + chromium-driver through selenium, as
the browser tests do), labels the first windows (positive, negative, uncertain) so the picture shows the buttons in
use, asks for the next page (Enter: the probe retrains on them and picks boundary, top and audit windows), labels
two of those, saves a PNG of the page and stops the app with Ctrl-C (SIGINT).

    python bench/screenshot_label.py --store work/demo/store --class banana --out docs/label_app.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--mute-audio")


def wait_until(driver, script: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"browser: still false after {timeout:.0f} s: {script}")
        time.sleep(0.1)


def screenshot(store: Path, primary_label: str, out: Path, *, width: int = 1300, height: int = 900,
               labels: str = "pnu", then: str = "pn") -> Path:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="label-shot-") as tmp:
        copy = Path(tmp) / "store"
        shutil.copytree(store, copy, ignore=shutil.ignore_patterns("writer.lock"))
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.label", "--store", str(copy), "--class",
                                 primary_label, "--annotator", "demo", "--port", "0", "--quiet"],
                                stdout=subprocess.PIPE, text=True, cwd=root, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            first = proc.stdout.readline()
            if "http://" not in first:
                raise SystemExit(f"the app did not start: {first!r}")
            url = "http://" + first.split("http://", 1)[1].split()[0]
            options = webdriver.ChromeOptions()
            options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
            for flag in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={tmp}/profile"):
                options.add_argument(flag)
            driver = webdriver.Chrome(options=options,
                                      service=Service(executable_path=shutil.which("chromedriver")))
            try:
                driver.get(url)
                wait_until(driver, "return document.querySelectorAll('.card').length > 0")
                wait_until(driver, "return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
                wait_until(driver, "return [...document.querySelectorAll('audio')].every(a => a.readyState >= 1)")
                def label(keys: str) -> None:
                    for i, key in enumerate(keys):
                        ActionChains(driver).send_keys(key).perform()
                        wait_until(driver, f"return document.querySelectorAll('.card')[{i}].dataset.label !== ''")

                label(labels)
                if then:
                    ActionChains(driver).send_keys("\ue007").perform()      # Enter: the next page
                    wait_until(driver, "return document.getElementById('round-line').textContent.startsWith('round 1')")
                    wait_until(driver, "return document.readyState === 'complete' && "
                                       "[...document.images].every(i => i.complete && i.naturalWidth > 0)")
                    label(then)
                driver.execute_script("window.scrollTo(0, 0)")
                out.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(out))
            finally:
                driver.quit()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True, help="an embedded store (copied; never written)")
    ap.add_argument("--class", dest="primary_label", default="banana", help="class to label (default banana)")
    ap.add_argument("--out", type=Path, default=Path("docs/label_app.png"))
    args = ap.parse_args()
    print(f"wrote {screenshot(args.store, args.primary_label, args.out)}")


if __name__ == "__main__":
    main()
