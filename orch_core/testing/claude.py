"""Run the real Claude Code binary interactively in a tmux pane, talking to a StandInAPI.

The session gets a scratch HOME that skips onboarding, the trust dialog and the API-key
question, and an environment that keeps every byte on this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from orch_core.testing.standin import DEFAULT_TIMEOUT, RecordedRequest, StandInAPI
from orch_core.testing.tmux import TmuxServer
from orch_core.testing.tmux import wait_until as wait_until  # the kit's bounded wait, here too

CLAUDE_BIN_ENV = "ORCH_CLAUDE_BIN"
DEFAULT_CLAUDE_BIN = (
    Path(__file__).resolve().parents[2]
    / ".cache/claude-code/node_modules/@anthropic-ai/claude-code-linux-x64/claude"
)
API_KEY = "sk-ant-api03-orch-standin-key-0123456789abcdefghij"
DEFAULT_ARGS = ("--allowedTools", "Bash")
PROMPT_MARK = "\u276f"  # the marker at the start of the input box
_POLL_SECONDS = 0.1

# Claude Code's own updater runs `npm install -g` and its telemetry phones home unless told not
# to: these are applied last, so a caller's extra environment cannot switch them back on.
# Anything else that tries the network meets a dead proxy (port 9 on 127.0.0.1), while the
# stand-in on 127.0.0.1 is reached directly.
_DEAD_PROXY = "http://127.0.0.1:9"
_LOCAL = "127.0.0.1,localhost"
NETWORK_GUARD_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    **{name: _DEAD_PROXY for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")},
    **{name: _LOCAL for name in ("NO_PROXY", "no_proxy")},
}


class ClaudeBinaryMissing(FileNotFoundError):
    """The Claude Code binary is not where ORCH_CLAUDE_BIN or the default path says."""


def claude_binary() -> Path:
    """The binary from ``$ORCH_CLAUDE_BIN``, else the copy ``make setup`` installs in .cache."""
    path = Path(os.environ.get(CLAUDE_BIN_ENV) or DEFAULT_CLAUDE_BIN)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ClaudeBinaryMissing(
            f"Claude Code binary not found or not executable at {path}; run `make setup` "
            f"or point {CLAUDE_BIN_ENV} at it"
        )
    return path


def write_hook_settings(project: Path, commands: Mapping[str, str], timeout: int = 10) -> Path:
    """Register one command hook per event in ``<project>/.claude/settings.json``.

    ``commands`` maps an event name (e.g. ``PostToolUse``) to a shell command line; use
    absolute paths, since hook commands run through ``sh -c``. ``timeout`` is in seconds.
    """
    hooks = {
        event: [{"hooks": [{"type": "command", "command": command, "timeout": timeout}]}]
        for event, command in commands.items()
    }
    settings = project / ".claude" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"hooks": hooks}, indent=2))
    return settings


class ClaudeSession:
    """One interactive Claude Code process in a tmux window, pointed at a StandInAPI."""

    def __init__(
        self,
        project: Path,
        api: StandInAPI,
        tmux: TmuxServer,
        *,
        home: Path | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = DEFAULT_ARGS,
        name: str = "claude",
    ) -> None:
        """Prepare, but do not start, a session.

        ``home`` is the scratch HOME (transcripts land there); by default a temporary folder
        that ``close()`` removes. ``env`` is added to the environment, except for the
        stand-in URL and the network guards, which always win.
        """
        self.binary = claude_binary()
        self.project = project.resolve()
        self.api = api
        self.tmux = tmux
        self.session_id = str(uuid.uuid4())
        self._own_home = home is None
        self.home = home or Path(tempfile.gettempdir()) / f"orch-claude-home-{self.session_id}"
        self.extra_env = dict(env or {})
        self.args = list(args)
        self.name = name
        self.pane: str | None = None

    # lifecycle

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> Self:
        """Launch Claude Code and wait until its prompt accepts input."""
        self._write_home()
        argv = [str(self.binary), "--session-id", self.session_id, *self.args]
        self.pane = self.tmux.new_window(self.name, argv, env=self.environment(), cwd=self.project)
        self.wait_until_ready(timeout)
        return self

    def environment(self) -> dict[str, str]:
        """The full environment the Claude process (and so every hook) runs with."""
        env = {
            "HOME": str(self.home),
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "ANTHROPIC_API_KEY": API_KEY,
            "CLAUDE_CODE_MAX_RETRIES": "0",
            **self.extra_env,
            "ANTHROPIC_BASE_URL": self.api.base_url,
        }
        env.update(NETWORK_GUARD_ENV)
        return env

    def _write_home(self) -> None:
        """A ``.claude.json`` that takes Claude straight to the prompt, hooks trusted."""
        self.home.mkdir(parents=True, exist_ok=True)
        key = self.environment()["ANTHROPIC_API_KEY"]
        state = {
            "hasCompletedOnboarding": True,
            "projects": {str(self.project): {"hasTrustDialogAccepted": True}},
            "customApiKeyResponses": {"approved": [key[-20:]], "rejected": []},
        }
        (self.home / ".claude.json").write_text(json.dumps(state, indent=2))

    def close(self, timeout: float = 15.0) -> None:
        """Type ``/exit`` so SessionEnd hooks fire; kill the window if Claude does not leave."""
        if self.pane is None:
            return
        pane, self.pane = self.pane, None
        try:
            if self.tmux.is_alive(pane):
                self.tmux.send_text(pane, "/exit")
                with contextlib.suppress(TimeoutError):
                    wait_until(lambda: not self.tmux.is_alive(pane), timeout, "exit")
        finally:
            self.tmux.kill_pane(pane)
            if self._own_home:
                shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # interaction

    @property
    def _pane(self) -> str:
        if self.pane is None:
            raise RuntimeError("Claude session is not running; call start() first")
        return self.pane

    def screen(self) -> str:
        """What the pane shows right now."""
        return self.tmux.capture(self._pane)

    def is_ready(self) -> bool:
        """True when the input box is on screen and empty.

        Claude keeps the box open while it works, so this does not mean the turn is over:
        wait on the stand-in's requests or on what the hooks logged for that.
        """
        return any(line.strip() == PROMPT_MARK for line in self.screen().splitlines())

    def wait_until_ready(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait for an empty input box; fail early, with the screen, if Claude exited."""
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if not self.tmux.is_alive(self._pane):
                raise RuntimeError(f"Claude Code exited before its prompt:\n{self.screen()}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no Claude prompt after {timeout:.0f}s:\n{self.screen()}")
            time.sleep(_POLL_SECONDS)

    def prompt(self, text: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Type a prompt once the input box is empty, and submit it (queued if Claude is busy)."""
        self.wait_until_ready(timeout)
        self.tmux.send_text(self._pane, text)

    # what reached the stand-in

    def requests(self) -> list[RecordedRequest]:
        """Main-model requests sent by this session (not by another one on the same stand-in)."""
        return self.api.requests_to_main_model(self.session_id)

    def wait_for_requests(
        self, count: int, timeout: float = DEFAULT_TIMEOUT
    ) -> list[RecordedRequest]:
        """Wait until this session made at least ``count`` main-model requests; return them."""
        return self.api.wait_for_main_requests(count, timeout, session_id=self.session_id)


class ClaudeFactory(Protocol):
    """Starts a ClaudeSession on the test's stand-in and tmux server (the ``claude`` fixture)."""

    def __call__(
        self,
        project_dir: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = DEFAULT_ARGS,
    ) -> ClaudeSession: ...
