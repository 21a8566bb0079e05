"""The idle plugin: wakes an idle agent when a message arrives for it.

No hook fires while an agent waits at its prompt, so hooks alone never reach it. When a message
is queued for an agent that presence saw go idle, this plugin types one fixed, short line into the
agent's tmux pane and presses Enter; the UserPromptSubmit hook then delivers the queue. It types
through tmux's argv (never a shell), with ``send-keys -l`` and a separate Enter, holding one lock
per pane, only while the agent is idle and once per batch (the agent is ``waking`` until its next
prompt). A message body is never typed.
"""

from __future__ import annotations

import os

from orch_core import hookimpl, paths

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from typing import Any

    from orch_core.context import HookContext

WAKE_LINE = "orch: new messages are waiting for you."
DEFAULTS: dict[str, Any] = {"rewake_seconds": 30}


@hookimpl
def orch_config_defaults() -> dict[str, Any]:
    return DEFAULTS


@hookimpl
def orch_message_enqueued(message: dict[str, Any], ctx: HookContext) -> None:
    agent = message["agent"]
    target = ctx.store.agent_pane(agent)
    if target is None:
        return
    stale = float({**DEFAULTS, **ctx.config}["rewake_seconds"])
    if not ctx.store.transition(agent, "waking", only_from=("idle",), or_stale=("waking", stale)):
        return
    ctx.fire("orch_agent_state_changed", agent=agent, old="idle", new="waking")
    pane, socket = target
    if not type_line(pane, socket, WAKE_LINE, paths.state_dir(ctx.env)):
        ctx.log("could not wake the agent", level="warning", pane=pane)


def type_line(pane: str, socket: str | None, text: str, state_dir: str) -> bool:
    """Type ``text`` into ``pane`` literally and press Enter, under the pane's lock."""
    import fcntl
    import subprocess

    server = ["-S", socket] if socket else []
    lock_name = "".join(c if c.isalnum() else "_" for c in f"{socket or 'default'}{pane}")
    folder = os.path.join(state_dir, "locks")
    paths.ensure_private_dir(folder)
    fd = os.open(os.path.join(folder, f"{lock_name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for keys in (["-l", "--", text], ["Enter"]):
            done = subprocess.run(
                ["tmux", *server, "send-keys", "-t", pane, *keys],
                capture_output=True, timeout=5, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                return False
        return True
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        os.close(fd)
