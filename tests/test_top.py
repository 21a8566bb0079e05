"""``orch top`` against a real store, driven by Textual's own pilot, and once in a real tmux
pane: what it shows, that it keeps up, and what its keys do."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING

import pytest

from orch_core.ops.top import AGENT_COLUMNS, TopApp
from orch_core.queue import Queue
from orch_core.testing.kit import OrchState, orch_script
from orch_core.testing.payloads import payload
from orch_core.testing.tmux import TmuxServer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from textual.pilot import Pilot

LEAD, WORKER = "proj:lead", "team[1]:0"  # the worker's name would be a pattern to orch send


def fleet(orch: OrchState) -> None:
    """An idle lead and a busy worker, as their hooks report them."""
    orch.run(payload("SessionStart", session_id="s-lead"), ORCH_AGENT=LEAD)
    orch.run(payload("UserPromptSubmit", session_id="s-work", prompt="go"), ORCH_AGENT=WORKER)


def drive(orch: OrchState, script: Callable[[TopApp, Pilot[None]], Awaitable[None]]) -> None:
    """Run the app headless, and ``script`` in it once its first snapshot is shown."""
    app = TopApp(orch.store, orch.env)

    async def run() -> None:
        async with app.run_test(size=(180, 40)) as pilot:
            await settled(app, pilot)
            await script(app, pilot)

    asyncio.run(run())


async def settled(app: TopApp, pilot: Pilot[None]) -> None:
    """Every worker done and what it reported handled, the snapshots an action asks for too."""
    for _ in range(20):
        await app.workers.wait_for_complete()
        await pilot.pause()
        if all(worker.is_finished for worker in app.workers):
            return
    raise AssertionError("the workers never settled")


def row(app: TopApp, agent: str) -> dict[str, str]:
    cells = app.agents_table.get_row(agent)
    return {column: str(cell) for column, cell in zip(AGENT_COLUMNS, cells, strict=True)}


def status(app: TopApp) -> str:
    return str(app.query_one("#status").render())


def header(app: TopApp) -> str:
    return str(app.query_one("#header").render())


async def select(pilot: Pilot[None], ids: list[str], wanted: str) -> None:
    """Move the focused table's cursor onto ``wanted`` with the arrow keys."""
    await pilot.press("home", *["down"] * ids.index(wanted))


def test_the_table_shows_each_agent_its_state_and_pending_counts_by_band(
    orch: OrchState,
) -> None:
    fleet(orch)
    queue = Queue(orch.store)
    for priority in (0, 0, 60):
        queue.send(WORKER, f"job at {priority}", priority=priority)
    queue.send(LEAD, "now [bold]x[/] \x1b]0;title\x07", priority=120, sender="ops")

    async def script(app: TopApp, pilot: Pilot[None]) -> None:
        assert app.agent_ids == [LEAD, WORKER]
        lead, worker = row(app, LEAD), row(app, WORKER)
        assert (lead["state"], lead["pending"], lead["emer"], lead["norm"]) == (
            "idle", "1", "1", "·",
        )  # fmt: skip
        assert (worker["state"], worker["pending"], worker["crit"], worker["norm"]) == (
            "busy", "3", "1", "2",
        )  # fmt: skip
        assert "orch top  2 agents  4 pending" in header(app)
        assert "2 runs, 0 failed" in header(app)
        text = app.messages_table.get_row(app.message_ids[0])[-1]  # plain, inert text
        assert (str(text), text.spans) == ("now [bold]x[/] \\x1b]0;title\\x07", [])

    drive(orch, script)


def test_the_view_picks_up_a_message_sent_while_it_runs(orch: OrchState) -> None:
    fleet(orch)

    async def script(app: TopApp, pilot: Pilot[None]) -> None:
        assert row(app, LEAD)["pending"] == "0"
        sent = Queue(orch.store).send(LEAD, "arrived later")
        for _ in range(200):  # the interval timer takes the next snapshot within a second
            if row(app, LEAD)["pending"] == "1":
                break
            await pilot.pause(0.05)
        assert row(app, LEAD)["pending"] == "1"
        assert app.message_ids == [sent["id"]]

    drive(orch, script)


def test_the_send_key_queues_one_message_for_the_selected_agent(orch: OrchState) -> None:
    fleet(orch)

    async def script(app: TopApp, pilot: Pilot[None]) -> None:
        await select(pilot, app.agent_ids, WORKER)
        await pilot.press("s", *"not this", "escape")  # a prompt left with Escape sends nothing
        await pilot.press("s", *"rebase", "space", *"now", "enter")
        await settled(app, pilot)
        assert status(app).endswith(f"for {WORKER}")
        assert row(app, WORKER)["pending"] == "1"

    drive(orch, script)
    (message,) = Queue(orch.store).messages()
    assert (message["agent"], message["body"], message["sender"]) == (
        WORKER, "rebase now", "orch top",
    )  # fmt: skip


def test_cancel_and_retry_change_the_selected_messages_state(orch: OrchState) -> None:
    fleet(orch)
    queue = Queue(orch.store)
    first = queue.send(LEAD, "first")["id"]
    queue.send(LEAD, "second")

    async def script(app: TopApp, pilot: Pilot[None]) -> None:
        await pilot.press("tab")  # to the messages
        await select(pilot, app.message_ids, first)
        await pilot.press("c")
        await settled(app, pilot)
        assert queue.get(first)["state"] == "cancelled"  # type: ignore[index]
        assert status(app) == f"{first} is now cancelled"
        await pilot.press("c")  # the cursor stayed on it
        await settled(app, pilot)
        assert status(app) == f"error: message {first} is already cancelled"
        await pilot.press("r")
        await settled(app, pilot)
        assert queue.get(first)["state"] == "queued"  # type: ignore[index]
        assert status(app) == f"{first} is now queued"

    drive(orch, script)
    assert [m["state"] for m in queue.messages(LEAD)] == ["queued", "queued"]


def test_a_restart_that_cannot_happen_says_why_in_the_status_line(orch: OrchState) -> None:
    fleet(orch)

    async def script(app: TopApp, pilot: Pilot[None]) -> None:
        await pilot.press("R", "n")  # not confirmed: nothing happens
        await settled(app, pilot)
        assert status(app) == ""
        await pilot.press("R", "y")
        await settled(app, pilot)
        assert status(app) == (
            f"error: no launch spec for {LEAD}: start it with `orch spawn` or describe it "
            "with `orch adopt`"
        )
        assert app.is_running

    drive(orch, script)


def test_rebrief_asks_for_one_in_the_agents_project_or_says_why_not(orch: OrchState) -> None:
    fleet(orch)
    config = orch.write_config('[plugins]\ndisable = ["rebrief"]\n')

    async def script(app: TopApp, pilot: Pilot[None]) -> None:
        await pilot.press("b")
        await settled(app, pilot)
        assert status(app) == "error: orch rebrief: No such command 'rebrief'."
        config.unlink()
        await pilot.press("b")
        await settled(app, pilot)
        assert status(app) == f"{LEAD} will be rebriefed at its next hook"

    drive(orch, script)
    asked = orch.store.execute(
        "SELECT agent_id FROM agent_context WHERE rebrief_pending <> 0"
    ).fetchall()
    assert asked == [(LEAD,)]


def test_rebrief_imports_nothing_from_the_agents_project(orch: OrchState, tmp_path: Path) -> None:
    """The project is a cloned repository: a ``click.py`` of its own must not run."""
    marker = tmp_path / "pwned"
    (orch.project_dir / "click.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    fleet(orch)

    async def script(app: TopApp, pilot: Pilot[None]) -> None:
        await pilot.press("b")
        await settled(app, pilot)
        assert status(app) == f"{LEAD} will be rebriefed at its next hook"

    drive(orch, script)
    assert not marker.exists()


@pytest.mark.orch_backends("postgresql")
def test_a_database_outage_is_said_while_it_lasts_and_no_longer(orch: OrchState) -> None:
    """The server stops: the view keeps running and says why it cannot read the fleet; once
    the server is back, the error leaves the status line (the picture is live again)."""
    fleet(orch)
    assert orch.cluster is not None
    cluster = orch.cluster

    async def script(app: TopApp, pilot: Pilot[None]) -> None:
        async def until(check: Callable[[], bool]) -> None:
            for _ in range(200):
                if check():
                    return
                await pilot.pause(0.05)
            raise AssertionError(f"never so; the status line says {status(app)!r}")

        cluster.pause()
        try:
            await until(lambda: status(app).startswith("error: cannot read the fleet:"))
            assert app.is_running
        finally:
            cluster.resume()
        Queue(orch.store).send(LEAD, "after the outage")
        await until(lambda: row(app, LEAD)["pending"] == "1")
        await settled(app, pilot)
        assert status(app) == ""

    try:
        drive(orch, script)
    finally:
        if not cluster.running:
            cluster.resume()


@pytest.mark.tmux
def test_orch_top_in_a_real_tmux_pane(orch: OrchState, tmp_path: Path) -> None:
    fleet(orch)
    Queue(orch.store).send(WORKER, "the first job")
    env = {key: orch.env[key] for key in ("ORCH_DB", "ORCH_STATE_DIR", "XDG_CONFIG_HOME",
                                          "CLAUDE_PROJECT_DIR")}  # fmt: skip
    with TmuxServer(width=160, height=30) as tmux:
        exited = tmp_path / "exit-status"
        wrapper = (
            "import os, subprocess, sys; code = subprocess.call(sys.argv[2:]);"
            " open(sys.argv[1] + '.part', 'w').write(str(code));"
            " os.rename(sys.argv[1] + '.part', sys.argv[1])"
        )
        argv = [sys.executable, "-c", wrapper, str(exited), orch_script(), "top"]
        pane = tmux.new_window("top", argv, env=env, cwd=orch.project_dir)
        # no client is attached to this server, so tmux tells the program it is not in focus
        # (and Textual leaves the footer empty): focus it, as a terminal looking at it would
        tmux.wait_for_text(pane, "orch top  2 agents  1 pending", timeout=30)
        tmux.cmd("send-keys", "-t", pane, "-l", "\x1b[I")
        screen = tmux.wait_for_text(pane, "Quit", timeout=30)
        assert LEAD in screen and WORKER in screen
        assert "the first job" in screen
        Queue(orch.store).send(LEAD, "a second job")
        screen = tmux.wait_for_text(pane, "orch top  2 agents  2 pending", timeout=30)
        assert "a second job" in screen
        (tmp_path / "top.txt").write_text(screen)
        tmux.send_keys(pane, "q")
        deadline = time.monotonic() + 30
        while not exited.exists():  # tmux does not always record a pane's exit status: the
            assert time.monotonic() < deadline, "orch top did not end on q"  # wrapper does
            time.sleep(0.05)
        assert exited.read_text() == "0"
