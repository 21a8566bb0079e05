"""An isolated tmux server for tests: its own socket, in a folder removed with the server, so it
never touches the user's tmux.

Every tmux call is an argv list (no shell). Panes stay visible after their process exits
(``remain-on-exit``), so a test can still read what a crashed program printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

SESSION = "orch-test"
_CONFIG = """\
set-option -g remain-on-exit on
set-option -g history-limit 20000
set-option -g focus-events on
set-option -g default-terminal screen-256color
"""
_POLL_SECONDS = 0.1


class TmuxError(RuntimeError):
    """tmux is missing, or one of its commands failed."""


class TmuxServer:
    """A private tmux server; ``kill()`` (or leaving the ``with`` block) removes it entirely."""

    def __init__(self, width: int = 200, height: int = 50) -> None:
        """Check tmux is installed; the server itself starts with the first window."""
        tmux = shutil.which("tmux")
        if tmux is None:
            raise TmuxError("tmux is not installed (apt-get install tmux); e2e tests need it")
        self.tmux = tmux
        version = subprocess.run(
            [tmux, "-V"], capture_output=True, text=True, timeout=10, check=False
        )
        if version.returncode != 0:
            raise TmuxError(f"`tmux -V` failed: {version.stderr.strip()}")
        self.version = version.stdout.strip()
        self.width = width
        self.height = height
        self.socket_name = f"orch-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._dir = Path(tempfile.mkdtemp(prefix="orch-tmux-"))
        # tmux leaves its socket behind when the server exits: in this folder, it goes with it.
        self.socket = str(self._dir / self.socket_name)
        self._config = self._dir / "tmux.conf"
        self._config.write_text(_CONFIG)
        # The server's global environment is the starting client's: keep it minimal so
        # nothing from the test runner's environment leaks into the panes.
        self._env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        if "TMUX_TMPDIR" in os.environ:
            self._env["TMUX_TMPDIR"] = os.environ["TMUX_TMPDIR"]
        # Runs on kill(), or when this object is collected or the interpreter exits.
        self._finalizer = weakref.finalize(
            self, _kill_server, [tmux, "-S", self.socket, "kill-server"], self._env, self._dir
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()

    def cmd(self, *args: str, check: bool = True) -> str:
        """Run one tmux command against this server and return its stdout."""
        done = self._run(args)
        if check and done.returncode != 0:
            raise TmuxError(f"tmux {args[0]} failed: {done.stderr.strip()}")
        return done.stdout

    def _run(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = [self.tmux, "-u", "-S", self.socket, "-f", str(self._config), *args]
        return subprocess.run(
            argv, capture_output=True, text=True, env=self._env, timeout=30, check=False
        )

    def new_window(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
    ) -> str:
        """Start ``argv`` (no shell) in a new window and return its pane id, e.g. ``%3``.

        The program sees only ``env``, PATH, LANG and tmux's own variables (TERM, TMUX_PANE...).
        """
        options = ["-d", "-n", name, "-P", "-F", "#{pane_id}"]
        if cwd is not None:
            options += ["-c", str(cwd)]
        for key, value in (env or {}).items():
            options += ["-e", f"{key}={value}"]
        if self._run(["has-session", "-t", f"={SESSION}"]).returncode == 0:
            created = self.cmd("new-window", "-t", f"={SESSION}:", *options, "--", *argv)
        else:
            size = ["-x", str(self.width), "-y", str(self.height)]
            created = self.cmd("new-session", "-s", SESSION, *size, *options, "--", *argv)
        return created.strip()

    def send_text(self, pane: str, text: str, enter: bool = True) -> None:
        """Type ``text`` literally into the pane, then press Enter as a separate key."""
        self.cmd("send-keys", "-t", pane, "-l", "--", text)
        if enter:
            self.cmd("send-keys", "-t", pane, "Enter")

    def send_keys(self, pane: str, *keys: str) -> None:
        """Send named keys such as ``Escape`` or ``C-c``."""
        self.cmd("send-keys", "-t", pane, *keys)

    def capture(self, pane: str, history: bool = False) -> str:
        """The pane's visible text (plus its scrollback when ``history``), wrapped lines joined."""
        start = ["-S", "-"] if history else []
        return self.cmd("capture-pane", "-p", "-J", "-t", pane, *start)

    def is_alive(self, pane: str) -> bool:
        """False once the pane's program has exited (or the pane is gone)."""
        state = self.cmd("display-message", "-p", "-t", pane, "#{pane_dead}", check=False)
        return state.strip() == "0"

    def wait_for_text(self, pane: str, needle: str, timeout: float = 60.0) -> str:
        """Poll the pane until ``needle`` shows up; return the capture or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.capture(pane)
            if needle in screen:
                return screen
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{needle!r} not on pane {pane} after {timeout:.0f}s:\n{screen}")
            time.sleep(_POLL_SECONDS)

    def kill_pane(self, pane: str) -> None:
        """Kill one pane (its program gets SIGHUP); a pane already gone is fine."""
        self.cmd("kill-pane", "-t", pane, check=False)

    def kill(self) -> None:
        """Kill the server and every program in it; safe to call more than once."""
        self._finalizer()


def _kill_server(argv: list[str], env: dict[str, str], folder: Path) -> None:
    """Kill the server, then wait (10 s at most) for its panes' programs: a Claude Code still
    exiting runs its SessionEnd hooks, which write into the caller's folders as they go."""
    listing = [*argv[:-1], "list-panes", "-a", "-F", "#{pane_pid}"]
    panes = subprocess.run(
        listing, capture_output=True, text=True, env=env, timeout=30, check=False
    )
    subprocess.run(argv, capture_output=True, env=env, timeout=30, check=False)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in panes.stdout.split()) and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)
    shutil.rmtree(folder, ignore_errors=True)


def alive(pid: str) -> bool:
    """Whether process ``pid`` runs (a zombie no longer does)."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


#: The recorder's program: appends every line typed into its pane to the file it is given.
_RECORDER = """
import sys
with open(sys.argv[1], "ab", buffering=0) as out:
    out.write(b"ready\\n")
    for line in iter(sys.stdin.buffer.readline, b""):
        out.write(line)
"""
#: What :meth:`Recorder.lines` types to know that every key sent before it was read.
SENTINEL = "--- end of test input ---"


def wait_until(
    condition: Callable[[], object],
    timeout: float = 60.0,
    what: str = "condition",
    interval: float = _POLL_SECONDS,
) -> None:
    """Poll ``condition`` until it holds; raise TimeoutError after ``timeout`` seconds. The
    test kit's one bounded wait."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f}s")
        time.sleep(interval)


class Recorder:
    """A window whose program, in place of Claude Code, keeps every line typed into it: a test
    sees exactly what orch typed, and that nothing ran."""

    def __init__(self, server: TmuxServer, log: Path, *, name: str = "agent",
                 cwd: Path | str | None = None) -> None:  # fmt: skip
        self.server = server
        self.log = log
        argv = [sys.executable, "-c", _RECORDER, str(log)]
        self.pane = server.new_window(name, argv, cwd=cwd)
        self.socket = server.cmd("display-message", "-p", "#{socket_path}").strip()
        wait_until(lambda: log.exists() and log.read_bytes() == b"ready\n", 15, "the recorder",
                   0.02)  # fmt: skip

    def typed(self) -> str:
        """Everything typed so far, as the program read it."""
        return self.log.read_bytes().decode().removeprefix("ready\n")

    def lines(self) -> list[str]:
        """The lines typed so far, but the sentinels: it first types one and waits for it, so
        all keys sent before have been read (one pty, first in first out)."""
        self.server.send_text(self.pane, SENTINEL)
        wait_until(lambda: self.log.read_bytes().endswith(f"{SENTINEL}\n".encode()), 15,
                   "the sentinel", 0.02)  # fmt: skip
        return [line for line in self.typed().splitlines() if line != SENTINEL]
