"""A real headless browser for tests of the pages orch serves: Debian's ``chromium``, driven
over the DevTools protocol through a pipe (``--remote-debugging-pipe``), so no debugging port
is opened and no websocket client is needed.

The page is what a person would get: its scripts run, its live updates arrive, and the test
reads the DOM they built and keeps a screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

#: Seconds one DevTools call, or one wait for the page, may take.
TIMEOUT = 30.0
#: File descriptors where ``--remote-debugging-pipe`` reads commands and writes replies.
_COMMANDS_FD, _REPLIES_FD = 3, 4


class BrowserError(RuntimeError):
    """chromium is missing, exited, or the page did not get where the test waited for."""


class Browser:
    """One headless chromium with a private profile under ``profile`` and one page."""

    def __init__(self, profile: Path, *, width: int = 1280, height: int = 900) -> None:
        chromium = shutil.which("chromium")
        if chromium is None:
            raise BrowserError("chromium is not installed: run `make setup` (Debian's chromium)")
        profile.mkdir(parents=True, exist_ok=True)
        self._log = profile / "chromium.log"
        commands_in, self._commands = os.pipe()
        self._replies, replies_out = os.pipe()

        def wire() -> None:  # in the child: put the pipe ends where chromium looks for them
            ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_in, replies_out)]
            os.dup2(ends[0], _COMMANDS_FD)
            os.dup2(ends[1], _REPLIES_FD)

        argv = [
            chromium,
            "--headless",
            "--no-sandbox",  # tests run as root on CI, where chromium's sandbox refuses to start
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--mute-audio",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        with open(self._log, "wb") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(_COMMANDS_FD, _REPLIES_FD),
                preexec_fn=wire,
            )
        os.close(commands_in)
        os.close(replies_out)
        self._buffer = b""
        self._last_id = 0
        self._session: str | None = None
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            attached = self.call("Target.attachToTarget", targetId=target, flatten=True)
            self._session = attached["sessionId"]
            self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                      deviceScaleFactor=1, mobile=False)  # fmt: skip
        except BaseException:
            self.close()
            raise

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command (to the page, once attached); its result."""
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params}
        if self._session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._commands, data) :]
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._read(deadline, method)
            if reply.get("id") == self._last_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def _read(self, deadline: float, method: str) -> dict[str, Any]:
        """The next message from chromium (replies and events alike)."""
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise BrowserError(f"chromium did not answer {method} in {TIMEOUT:g} s")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                tail = self._log.read_text(errors="replace")[-2000:]
                raise BrowserError(f"chromium exited during {method}:\n{tail}")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        found: dict[str, Any] = json.loads(message)
        return found

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        done = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in done:
            raise BrowserError(f"{expression}: {done['exceptionDetails'].get('text')}")
        return done["result"].get("value")

    def wait_for(self, expression: str, timeout: float = TIMEOUT) -> Any:
        """Poll until ``expression`` is truthy in the page; its value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except BrowserError:  # the page is still loading
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise BrowserError(f"waited {timeout:g} s for {expression}; last value {value!r}")

    def dom(self) -> str:
        """The page's DOM as it is now, serialized (what ``--dump-dom`` prints)."""
        html: str = self.evaluate("document.documentElement.outerHTML")
        return html

    def screenshot(self, path: Path) -> Path:
        """The whole page, as a PNG."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call("Page.captureScreenshot", format="png", clip=clip,
                         captureBeyondViewport=True)  # fmt: skip
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self.call("Browser.close")
            except (BrowserError, OSError):
                pass
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        for fd in (self._commands, self._replies):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
