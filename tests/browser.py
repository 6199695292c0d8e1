"""A real headless Chromium for the tests, driven through chromedriver's W3C WebDriver HTTP API.

No client library: the few commands the tests need (open a page, run a script, click at a point,
take a screenshot) are plain JSON over HTTP to a chromedriver on 127.0.0.1. Chromium runs with a
fresh profile and no network features; pages are local files.

Without Chromium and chromedriver the tests that need them are skipped with the reason, unless
``MMC_REQUIRE_BROWSER`` is set (CI sets it): then they fail.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


def browser_or_skip() -> tuple[str, str]:
    """(chromium, chromedriver) executables; skip (or fail under MMC_REQUIRE_BROWSER) without them."""
    chromium = next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    why = "Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)"
    if os.environ.get("MMC_REQUIRE_BROWSER"):
        pytest.fail(f"MMC_REQUIRE_BROWSER is set but {why}")
    pytest.skip(f"the browser tests need {why}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriverError(RuntimeError):
    pass


class Browser:
    """One chromedriver process and one Chromium session (use as a context manager)."""

    def __init__(self, workdir: Path, width: int = 1600, height: int = 1200):
        chromium, driver = browser_or_skip()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.log = open(self.workdir / "chromedriver.log", "wb")  # noqa: SIM115 (closed in quit)
        self.process = subprocess.Popen(
            [driver, f"--port={self.port}", "--allowed-ips=127.0.0.1"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        self._wait_ready()
        args = [*CHROMIUM_ARGS, f"--user-data-dir={self.workdir / 'profile'}", f"--window-size={width},{height}"]
        capabilities = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": chromium, "args": args},
                    "timeouts": {"script": 60_000, "pageLoad": 60_000},
                }
            }
        }
        self.session = self._call("POST", "/session", capabilities)["sessionId"]

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise WebDriverError(f"chromedriver exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.base}/status", timeout=2) as reply:
                    if json.load(reply)["value"].get("ready"):
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise WebDriverError(f"chromedriver did not become ready in {timeout} s")

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as reply:
                return json.load(reply)["value"]
        except urllib.error.HTTPError as e:
            raise WebDriverError(f"{method} {path}: {e.code} {e.read()[:2000]!r}") from None

    def _session(self, method: str, path: str, body: dict | None = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    # ------------------------------------------------------------------ commands
    def open(self, path: Path) -> None:
        self._session("POST", "/url", {"url": Path(path).resolve().as_uri()})

    def run(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body; ``arguments`` are ``args``) and return its value."""
        return self._session("POST", "/execute/sync", {"script": script, "args": list(args)})

    def run_async(self, script: str, *args: Any) -> Any:
        """Run ``script``; it calls ``arguments[arguments.length - 1](value)`` when done."""
        return self._session("POST", "/execute/async", {"script": script, "args": list(args)})

    def wait_for(self, script: str, *args: Any, timeout: float = 60.0) -> Any:
        """The first truthy value of ``script`` (run every 0.1 s), or an error after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.run(script, *args)
            if value:
                return value
            time.sleep(0.1)
        raise WebDriverError(f"timed out after {timeout} s waiting for: {script}")

    def click(self, x: float, y: float) -> None:
        """A real mouse click (pointer move, press, release) at viewport coordinates."""
        pointer = {
            "type": "pointer",
            "id": "mouse",
            "parameters": {"pointerType": "mouse"},
            "actions": [
                {"type": "pointerMove", "duration": 0, "origin": "viewport", "x": int(x), "y": int(y)},
                {"type": "pointerDown", "button": 0},
                {"type": "pointerUp", "button": 0},
            ],
        }
        self._session("POST", "/actions", {"actions": [pointer]})
        self._session("DELETE", "/actions")

    def switch_to_frame(self, index: int | None) -> None:
        """Into the ``index``-th frame of the page, or back to the top (None)."""
        self._session("POST", "/frame", {"id": index})

    def screenshot(self, path: Path) -> Path:
        path = Path(path)
        path.write_bytes(base64.b64decode(self._session("GET", "/screenshot")))
        return path

    def quit(self) -> None:
        try:
            self._session("DELETE", "")
        except (WebDriverError, OSError):
            pass
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.log.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.quit()
