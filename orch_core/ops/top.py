"""``orch top``: the fleet live in a terminal, and the few things an operator does from there.

Only ``orch top`` imports this module (and Textual with it); orch-hook never does. Every second
a worker thread takes one :func:`orch_core.ops.fleet.snapshot` and the tables are redrawn from
it; actions run in worker threads as well, so a busy database never freezes the screen, and
whatever an action raises ends in the status line. Agent names, senders and message texts are
shown as plain text (never as markup) with control characters escaped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Label, Static
from textual.worker import Worker

from orch_core import api, hosts, paths
from orch_core.errors import OrchError
from orch_core.ops import fleet
from orch_core.queue import BANDS, Queue, age
from orch_core.supervisor import lifecycle
from orch_core.text import inert, shortened

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from orch_core.storage.store import Store

#: Seconds between two snapshots.
REFRESH_SECONDS = 1.0
#: Who a message sent from the view is from, as the agent sees it.
SENDER = "orch top"
#: Seconds ``orch rebrief`` may take.
REBRIEF_TIMEOUT = 30.0
BAND_NAMES = tuple(name for _, name in BANDS)
#: Each band's column, by the start of its name: rebr, emer, crit, high, norm.
BAND_COLUMNS = tuple(name[:4] for name in BAND_NAMES)
AGENT_COLUMNS = ("agent", "host", "state", "seen", "pending", *BAND_COLUMNS, "oldest",
                 "restarts", "next", "compacted", "task")  # fmt: skip
MESSAGE_COLUMNS = ("changed", "id", "agent", "from", "band", "state", "text")
STATE_STYLES = {"busy": "green", "idle": "cyan", "starting": "yellow", "waking": "yellow",
                "error": "red", "failed": "bold red", "offline": "dim", "stopped": "dim",
                "unknown": "dim", hosts.UNREACHABLE: "bold red"}  # fmt: skip


def plain(value: object, width: int | None = None) -> Text:
    """Untrusted text as one inert line (no markup, no control characters), cut to ``width``."""
    line = inert(str(value)).replace("\n", " ").replace("\t", " ")
    if width is not None:
        line = shortened(line, width)
    return Text(line, no_wrap=True, end="")


def ago(now: float, ts: float | None) -> str:
    return f"{age(now - ts)} ago" if ts else "-"


def one_line(exc: BaseException) -> str:
    """What went wrong, in the words orch's own errors use."""
    text = str(exc) if isinstance(exc, OrchError) else f"{type(exc).__name__}: {exc}"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


class RebriefError(OrchError):
    """``orch rebrief`` failed; its own one-line reason."""


class Prompt(ModalScreen[str | None]):
    """Asks for one line of text; Enter gives it, Escape gives nothing."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss", "Back")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(plain(self.question))
            yield Input(placeholder="Enter to send, Escape to go back")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)


class Confirm(ModalScreen[bool]):
    """A yes or no before something that cannot be taken back."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(plain(f"{self.question} (y/n)"))

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class TopApp(App[None]):
    """Agents, recent messages and hook health, refreshed every second; keys act on the
    selected agent or message."""

    TITLE = "orch top"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #header { height: 2; padding: 0 1; }
    DataTable { height: 1fr; border: round $primary-darken-2; }
    DataTable:focus { border: round $accent; }
    #status { height: 1; padding: 0 1; }
    Prompt, Confirm { align: center middle; }
    .dialog { width: 80; height: auto; padding: 1 2; border: round $accent;
              background: $surface; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "send", "Send"),
        Binding("c", "cancel", "Cancel msg"),
        Binding("r", "retry", "Retry msg"),
        Binding("R", "restart", "Restart"),
        Binding("b", "rebrief", "Rebrief"),
        Binding("tab", "focus_next", "Agents/messages", priority=True),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, store: Store, env: Mapping[str, str] = os.environ) -> None:
        super().__init__()
        self.store = store
        self.env = env
        self.view: dict[str, Any] | None = None
        self.agent_ids: list[str] = []
        self.message_ids: list[str] = []
        self._snapshotting: Worker[dict[str, Any]] | None = None
        self._again = False
        #: Whether the status line says the last snapshot failed (cleared by the next one).
        self._unreadable = False
        self.host_timeout = lifecycle.host_timeout(env)

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        agents: DataTable[Text] = DataTable(id="agents", cursor_type="row", zebra_stripes=True)
        agents.border_title = "Agents"
        yield agents
        messages: DataTable[Text] = DataTable(id="messages", cursor_type="row")
        messages.border_title = "Recent messages"
        yield messages
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.agents_table.add_columns(*AGENT_COLUMNS)
        self.messages_table.add_columns(*MESSAGE_COLUMNS)
        self.set_interval(REFRESH_SECONDS, self.refresh_view)
        self.refresh_view()

    @property
    def agents_table(self) -> DataTable[Text]:
        return self.query_one("#agents", DataTable)

    @property
    def messages_table(self) -> DataTable[Text]:
        return self.query_one("#messages", DataTable)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """While a dialog is open, its keys are the only ones."""
        return action == "quit" or not isinstance(self.screen, ModalScreen)

    # -- the picture -----------------------------------------------------------------------

    def refresh_view(self) -> None:
        """Take a snapshot; while one is being taken, take the next as soon as it is done (one
        at a time, and what an action just changed is never missed)."""
        if self._snapshotting is not None and not self._snapshotting.is_finished:
            self._again = True
            return
        self._again = False
        self._snapshotting = self._snapshot()

    @work(thread=True, name="snapshot", exit_on_error=False)
    def _snapshot(self) -> dict[str, Any]:
        try:
            return fleet.snapshot(self.store, time.time(), host_timeout=self.host_timeout)
        finally:
            self.store.release()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A snapshot is shown; an action's outcome is said, and the picture taken again."""
        worker, result = event.worker, event.worker.result
        if worker.name == "snapshot" and worker.is_finished:
            if result is not None:
                if self._unreadable:  # the store is back: its outage is over, not news
                    self.say("")
                self.show(result)
            elif worker.error is not None:
                self.say(f"cannot read the fleet: {one_line(worker.error)}", error=True)
                self._unreadable = True
            if self._again:
                self.refresh_view()
        elif worker.name == "action" and result is not None:
            said, failed = result
            self.say(said, error=failed)
            self.refresh_view()

    def show(self, view: dict[str, Any]) -> None:
        """Redraw everything from one snapshot, keeping the selected rows."""
        try:
            heading = self.query_one("#header", Static)
        except NoMatches:
            return  # the view is being taken down (quitting): nothing left to draw on
        self.view = view
        now = view["now"]
        agents = view["agents"]
        pending = sum(sum(a["pending"].values()) for a in agents)
        hooks = view["hooks"]
        header = Text.assemble(
            ("orch top", "bold"),
            f"  {len(agents)} agents  {pending} pending  ",
            (time.strftime("%H:%M:%S", time.localtime(now)), "dim"),
            f"\nhooks, last {int(hooks['window'] // 60)} min: {hooks['runs']} runs, ",
            (f"{hooks['failed']} failed", "bold red" if hooks["failed"] else ""),
            f", median {hooks['p50_ms']:.0f} ms" if hooks["p50_ms"] is not None else "",
        )
        heading.update(header)
        self.agent_ids = self._fill(
            self.agents_table, self.agent_ids, [(a["id"], self._agent_row(a, now)) for a in agents]
        )
        latest: dict[str, dict[str, Any]] = {}
        for change in view["messages"]:  # newest first: a message's first row is its state now
            latest.setdefault(change["id"], change)
        self.message_ids = self._fill(
            self.messages_table,
            self.message_ids,
            [(m["id"], self._message_row(m, now)) for m in latest.values()],
        )

    @staticmethod
    def _agent_row(agent: dict[str, Any], now: float) -> list[Text]:
        counts = agent["pending"]
        step = agent["next_action"]
        task = agent["task"]
        state = hosts.UNREACHABLE if agent["unreachable"] else agent["state"]
        return [
            plain(agent["id"], 40),
            plain(agent["host"] or "-", 20),
            Text(state, style=STATE_STYLES.get(state, "")),
            Text(ago(now, agent["last_seen"])),
            Text(str(sum(counts.values())), style="bold"),
            *(Text(str(counts[name]) if counts[name] else "·") for name in BAND_NAMES),
            Text(age(now - agent["oldest_pending"]) if agent["oldest_pending"] else "-"),
            Text(str(agent["restarts_last_hour"])),
            Text(f"{step['step']} in {age(step['due'] - now)}" if step else "-"),
            Text(ago(now, agent["last_compaction"])),
            plain(task["text"], 40) if task else Text("-"),
        ]

    @staticmethod
    def _message_row(message: dict[str, Any], now: float) -> list[Text]:
        return [
            Text(ago(now, message["ts"])),
            Text(message["id"]),
            plain(message["agent"], 30),
            plain(message["sender"] or "-", 16),
            Text(message["band"]),
            Text(message["state"], style="bold" if message["state"] == "queued" else ""),
            plain(message["text"], 80),
        ]

    @staticmethod
    def _fill(
        table: DataTable[Text], shown: list[str], rows: list[tuple[str, list[Text]]]
    ) -> list[str]:
        """Put ``rows`` (key, cells) in ``table``; the cursor stays on the same key."""
        row = table.cursor_row
        selected = shown[row] if 0 <= row < len(shown) else None
        keys = [key for key, _ in rows]
        table.clear()
        for key, cells in rows:
            table.add_row(*cells, key=key)
        if selected in keys:
            table.move_cursor(row=keys.index(selected))
        elif keys:
            table.move_cursor(row=min(row, len(keys) - 1))
        return keys

    def say(self, text: str, *, error: bool = False) -> None:
        self._unreadable = False
        line = plain(f"error: {text}" if error else text)
        line.stylize("bold red" if error else "green")
        self.query_one("#status", Static).update(line)

    # -- the actions -----------------------------------------------------------------------

    def selected_agent(self) -> str | None:
        row = self.agents_table.cursor_row
        if 0 <= row < len(self.agent_ids):
            return self.agent_ids[row]
        self.say("no agent selected", error=True)
        return None

    def selected_message(self) -> str | None:
        row = self.messages_table.cursor_row
        if 0 <= row < len(self.message_ids):
            return self.message_ids[row]
        self.say("no message selected", error=True)
        return None

    def project_of(self, agent: str) -> str:
        """The agent's own project (its plugins and their settings), else orch top's."""
        for entry in (self.view or {}).get("agents", []):
            if (
                entry["id"] == agent
                and entry["project_dir"]
                and os.path.isdir(entry["project_dir"])
            ):
                return str(entry["project_dir"])
        return paths.project_dir(self.env)

    def action_send(self) -> None:
        agent = self.selected_agent()
        if agent is None:
            return

        def sent(text: str | None) -> None:
            if text is not None and text.strip():
                self.act(lambda: self.send_to(agent, text))

        self.push_screen(Prompt(f"Message to {agent}:"), sent)

    def send_to(self, agent: str, text: str) -> str:
        """As ``orch send --exact`` does: queued, and the agent woken if it waits at its prompt."""
        (receipt,) = api.send(agent, text, env=self.env, project_dir=self.project_of(agent),
                              queue=Queue(self.store), exact=True, sender=SENDER)  # fmt: skip
        return f"queued {receipt['id']} for {agent}"

    def action_cancel(self) -> None:
        message = self.selected_message()
        if message is not None:
            self.act(lambda: f"{message} is now {Queue(self.store).cancel(message)['state']}")

    def action_retry(self) -> None:
        message = self.selected_message()
        if message is not None:
            self.act(lambda: f"{message} is now {Queue(self.store).retry(message)['state']}")

    def action_restart(self) -> None:
        agent = self.selected_agent()
        if agent is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.act(lambda: self.restart(agent))

        self.push_screen(Confirm(f"Restart {agent}, keeping its conversation?"), confirmed)

    def restart(self, agent: str) -> str:
        """What ``orch restart AGENT`` does."""
        spec = lifecycle.restart(self.store, agent, env=self.env)
        return f"restarted {agent} in pane {spec['pane']}"

    def action_rebrief(self) -> None:
        agent = self.selected_agent()
        if agent is not None:
            self.act(lambda: self.rebrief(agent))

    def rebrief(self, agent: str) -> str:
        """``orch rebrief AGENT``, a command of the rebrief plugin, run in the agent's project
        (where that plugin may be switched off: then its one-line error shows). ``-P``: the
        project is not put on ``sys.path``, or its own ``click.py`` would be imported."""
        project = self.project_of(agent)
        done = subprocess.run(
            [sys.executable, "-P", "-m", "orch_core.cli", "rebrief", "--", agent],
            capture_output=True,
            text=True,
            env={**self.env, "CLAUDE_PROJECT_DIR": project},
            cwd=project,
            timeout=REBRIEF_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
            raise RebriefError(f"orch rebrief: {lines[-1].removeprefix('Error: ')}")
        return done.stdout.strip()

    @work(thread=True, name="action", group="actions", exit_on_error=False)
    def act(self, action: Callable[[], str]) -> tuple[str, bool]:
        """Run one action: what it says and whether it failed; never raises."""
        try:
            return action(), False
        except Exception as exc:  # the view outlives whatever an action runs into
            return one_line(exc), True
        finally:
            self.store.release()
