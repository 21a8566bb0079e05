"""The rebrief plugin: an agent gets its role, rules, recent work and git state back after
compaction or a restart.

As the agent works it keeps a short, bounded activity record (tool and target, success, time;
prompts; messages delivered). On PreCompact it saves a checkpoint (the plan's ``agent_context``):
activity summary, recent commands, branch and touched files, the task messages, pending count. On
SessionStart with ``source`` ``compact`` it answers first (``tryfirst``, so before any queued
message) with the rebrief: agent and role, briefing, project rules (``CLAUDE.md`` by default),
recent activity, current task, git state read at that moment, pending count; each section marked,
the whole trimmed to a budget. The same restore, labelled a restart, follows a ``startup`` or
``resume`` when a recent checkpoint exists; ``orch rebrief AGENT`` forces one at the agent's next
delivery point; an agent with a briefing (``orch spawn --brief``) gets it at its first start
and after a ``/clear``.
``orch brief`` sets a briefing, ``orch context`` shows what is kept. Each rebrief is recorded
(when, what brought it, where the transcript ended, what its checkpoint held) in the transaction
that marks the agent briefed, and its section of ``orch stats`` says how well rebriefing works.
"""

from __future__ import annotations

import json
import os
import time

from orch_core import Setting, hookimpl, paths
from orch_core.plugins.settings import defaults
from orch_core.queue import PENDING_SQL, age, unmarked
from orch_core.text import head, length, shortened

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from typing import Any

    import click

    from orch_core.hook import events as ev
    from orch_core.hook.context import HookContext
    from orch_core.storage.store import Connection, Store

SECTIONS = ("agent", "briefing", "rules", "activity", "task", "git", "pending")


def _sections(value: dict[str, Any]) -> None:
    for name, on in value.items():
        if name not in SECTIONS:
            raise ValueError(f"{name!r} is not a section (one of {', '.join(SECTIONS)})")
        if not isinstance(on, bool):
            raise ValueError(f"{name} must be true or false")


SETTINGS: dict[str, Any] = {
    "budget": Setting(9000, min=500, max=9500),  # characters, below Claude's 10,000 cap
    "sections": Setting({name: True for name in SECTIONS}, check=_sections),
    "rules_files": Setting(["CLAUDE.md"]),  # relative to the project
    "briefing_file": "",  # the project's default briefing, when an agent has none of its own
    "role": "",
    "activity_kept": Setting(200, min=1),  # records per agent
    "activity_shown": Setting(12, min=0),
    "restore_within_hours": Setting(24.0, min=0),  # an older checkpoint is not restored
    "git_timeout": Setting(1.0, min=0.05, max=10),  # seconds, for git's two calls together
}
DEFAULTS = defaults(SETTINGS)
#: Trimmed first when the rebrief is over budget; the agent line last, once all else is. The
#: rules first: Claude Code itself puts the project's CLAUDE.md back after compaction and at
#: each start, and a long one would otherwise leave no room for the recent activity, which
#: nothing else gives back.
TRIM_ORDER = ("rules", "activity", "briefing", "task", "git", "pending", "agent")
#: The most of the role and of the project path the agent line shows: a role of any length
#: (``orch brief --role``, a project's ``role``) must leave the other sections their room.
AGENT_LINE_PART = 200


def _settings(ctx: HookContext) -> dict[str, Any]:
    settings = {**DEFAULTS, **ctx.config}
    settings["sections"] = {**DEFAULTS["sections"], **settings.get("sections", {})}
    return settings


def _store(ctx: HookContext) -> Store | None:
    return ctx.store if ctx.agent else None


@hookimpl
def orch_config_defaults() -> dict[str, Any]:
    return SETTINGS


@hookimpl
def orch_schema(dialect: str) -> dict[int, str]:
    """The activity record; per agent, its briefing and checkpoint; each rebrief given, with
    what its checkpoint held (for ``orch stats``)."""
    return SCHEMA_POSTGRESQL if dialect == "postgresql" else SCHEMA_SQLITE


SCHEMA_SQLITE = {
    1: """
    CREATE TABLE activity (
        id INTEGER PRIMARY KEY,
        agent TEXT NOT NULL,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        tool TEXT,
        target TEXT,
        ok INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX activity_agent ON activity(agent, id);
    CREATE TABLE agent_context (
        agent_id TEXT PRIMARY KEY,
        role TEXT,
        briefing_content TEXT,
        last_briefing REAL,
        checkpoint_data TEXT,
        checkpoint_at REAL,
        rebrief_pending INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    2: """
    CREATE TABLE rebriefs (
        id INTEGER PRIMARY KEY,
        agent TEXT NOT NULL,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        transcript TEXT,
        transcript_from INTEGER,
        branch TEXT,
        checkpoint_at REAL,
        checkpoint_branch TEXT,
        checkpoint_files TEXT
    );
    CREATE INDEX rebriefs_ts ON rebriefs(ts);
    """,
    3: "ALTER TABLE agent_context ADD COLUMN spawned_at REAL;",
}
SCHEMA_POSTGRESQL = {
    1: """
    CREATE TABLE activity (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        agent TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        tool TEXT,
        target TEXT,
        ok BIGINT NOT NULL DEFAULT 1
    );
    CREATE INDEX activity_agent ON activity(agent, id);
    CREATE TABLE agent_context (
        agent_id TEXT PRIMARY KEY,
        role TEXT,
        briefing_content TEXT,
        last_briefing DOUBLE PRECISION,
        checkpoint_data TEXT,
        checkpoint_at DOUBLE PRECISION,
        rebrief_pending BIGINT NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    """,
    2: """
    CREATE TABLE rebriefs (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        agent TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        transcript TEXT,
        transcript_from BIGINT,
        branch TEXT,
        checkpoint_at DOUBLE PRECISION,
        checkpoint_branch TEXT,
        checkpoint_files TEXT
    );
    CREATE INDEX rebriefs_ts ON rebriefs(ts);
    """,
    3: "ALTER TABLE agent_context ADD COLUMN spawned_at DOUBLE PRECISION;",
}


# -- what is kept as the agent works ------------------------------------------------------------


def tool_target(event: ev.PostToolUse | ev.PostToolUseFailure) -> str:
    """The short 'what' of a tool call: a path, the first line of a command, a pattern."""
    tool_input = event.tool_input
    for key in ("file_path", "notebook_path", "command", "pattern", "url", "description", "path"):
        value = tool_input.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip().splitlines()[0][:200]
    return ""


def record(ctx: HookContext, kind: str, tool: str | None, target: str, ok: bool = True) -> None:
    store = _store(ctx)
    if store is None:
        return
    assert ctx.agent is not None
    with store.transaction() as tx:
        tx.execute(
            "INSERT INTO activity (agent, ts, kind, tool, target, ok) VALUES (?, ?, ?, ?, ?, ?)",
            (ctx.agent, time.time(), kind, tool, target, int(ok)),
        )
        # each agent's record bounded on each insert, whatever the other agents add: one
        # statement through the index on (agent, id), which deletes the one record that
        # fell out (none until the record is full)
        tx.execute(
            "DELETE FROM activity WHERE agent = ? AND id <= (SELECT id FROM activity"
            " WHERE agent = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (ctx.agent, ctx.agent, int(_settings(ctx)["activity_kept"])),
        )


@hookimpl(tryfirst=True)
def orch_post_tool_use(event: ev.PostToolUse, ctx: HookContext) -> str | None:
    if event.in_subagent:  # its context goes to the subagent, whose conversation ends
        return None
    record(ctx, "tool", event.tool_name, tool_target(event))
    return forced(ctx, event.transcript_path)


@hookimpl(tryfirst=True)
def orch_post_tool_use_failure(event: ev.PostToolUseFailure, ctx: HookContext) -> str | None:
    if event.in_subagent:  # its context goes to the subagent, whose conversation ends
        return None
    record(ctx, "tool", event.tool_name, tool_target(event), ok=False)
    return forced(ctx, event.transcript_path)


@hookimpl(tryfirst=True)
def orch_user_prompt_submit(event: ev.UserPromptSubmit, ctx: HookContext) -> str | None:
    record(ctx, "prompt", None, (event.prompt or "").strip()[:200])
    return forced(ctx, event.transcript_path)


@hookimpl
def orch_message_delivered(message: dict[str, Any], ctx: HookContext) -> None:
    record(ctx, "message", message.get("sender"), f"{message['id']}: {message['body'][:150]}")


# -- checkpoint and rebrief ----------------------------------------------------------------------


def context_row(store: Store, agent: str) -> dict[str, Any] | None:
    cur = store.execute("SELECT * FROM agent_context WHERE agent_id = ?", (agent,))
    row = cur.fetchone()
    return dict(zip([d[0] for d in cur.description], row, strict=True)) if row else None


def update_context(store: Store, agent: str, **fields: Any) -> None:
    with store.transaction() as tx:
        _update_context(tx, agent, time.time(), fields)


def _update_context(tx: Connection, agent: str, now: float, fields: dict[str, Any]) -> None:
    names = list(fields)
    tx.execute(
        f"INSERT INTO agent_context (agent_id, created_at, updated_at, {', '.join(names)})"
        f" VALUES (?, ?, ?, {', '.join('?' for _ in names)}) ON CONFLICT (agent_id) DO UPDATE"
        f" SET updated_at = excluded.updated_at,"
        f" {', '.join(f'{n} = excluded.{n}' for n in names)}",
        (agent, now, now, *fields.values()),
    )


#: What a working copy's own ``.git/config`` could make ``git status`` and ``git log`` run: a
#: file-system monitor, a signature program, a fetch of missing objects (a remote's
#: ``uploadpack`` runs in a shell), a bare repository committed inside a project found as the
#: repository. (Its filter drivers, which git runs for any client there, stay its own: treat a
#: working copy handed over whole as code.)
GIT_SAFE = ("-c", "core.fsmonitor=false", "-c", "log.showSignature=false",
            "-c", "core.untrackedCache=false", "-c", "protocol.allow=never",
            "-c", "safe.bareRepository=explicit", "--no-optional-locks")  # fmt: skip


#: Seconds of a hook's budget that git leaves the rest of a checkpoint or rebrief (its reads,
#: its one write).
GIT_MARGIN = 0.1


def git_timeout(ctx: HookContext, settings: dict[str, Any]) -> float:
    """``git_timeout``, within what is left of the hook's budget: a plugin still running at
    the end of it is skipped, so a git slower than the budget would cost the whole checkpoint
    or rebrief, not only its git state."""
    timeout = float(settings["git_timeout"])
    if ctx.deadline is not None:
        timeout = min(timeout, ctx.deadline - time.time() - GIT_MARGIN)
    return timeout


def git_state(cwd: str, timeout: float) -> dict[str, Any] | None:
    """Branch, HEAD, uncommitted files and last commits, from two git calls run side by side
    and bounded by ``timeout`` together (a compaction's rebrief has the hook's budget, and a
    loaded machine starts processes slowly). ``None`` outside a working copy or before its
    first commit. ``cwd`` comes from a hook's payload: git runs there with :data:`GIT_SAFE`."""
    import subprocess

    calls = (
        ("status", "--porcelain", "--branch", "--untracked-files=normal",
         "--ignore-submodules=all"),
        ("log", "-5", "--format=%h %s"),
    )  # fmt: skip
    if timeout <= 0:
        return None
    end = time.monotonic() + timeout
    running: list[subprocess.Popen[str]] = []
    outputs: list[str | None] = []
    try:
        for args in calls:
            running.append(
                subprocess.Popen(
                    ["git", *GIT_SAFE, "-C", cwd, *args],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    errors="replace",  # a log git prints in another encoding
                )
            )
        for proc in running:
            out, _ = proc.communicate(timeout=max(0.0, end - time.monotonic()))
            outputs.append(out if proc.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError, ValueError):  # ValueError: a NUL in ``cwd``
        return None
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    status, log = outputs
    if status is None or not log:
        return None
    lines = status.splitlines()
    # "## main", "## main...origin/main [ahead 1]", "## HEAD (no branch)": ref names hold no
    # "..." and no space
    branch = lines[0][3:].partition("...")[0].partition(" ")[0] if lines else ""
    commits = log.splitlines()
    return {
        "branch": branch,
        "head": commits[0].partition(" ")[0],
        "uncommitted": [line for line in lines[1:] if line.strip()][:50],
        "last_commits": commits,
    }


def recent_activity(
    store: Store, agent: str, limit: int, before: float | None = None
) -> list[dict[str, Any]]:
    cur = store.execute(
        "SELECT ts, kind, tool, target, ok FROM activity WHERE agent = ? AND ts < ?"
        " ORDER BY id DESC LIMIT ?",
        (agent, before or time.time() + 1, limit),
    )
    return [dict(zip(("ts", "kind", "tool", "target", "ok"), r, strict=True)) for r in cur]


def task_messages(
    store: Store, agent: str, limit: int = 3, before: float | None = None
) -> list[dict[str, Any]]:
    """The latest messages handed to the agent: what it was asked to do, newest first. Only
    since ``orch spawn`` last started an agent of that name: an earlier one's are not its task."""
    cur = store.execute(
        "SELECT id, sender, priority, body, delivered FROM messages WHERE agent = ?"
        " AND state IN ('delivered', 'confirmed') AND priority < 200 AND delivered < ?"
        " AND delivered >= coalesce((SELECT spawned_at FROM agent_context"
        " WHERE agent_id = ?), 0) ORDER BY delivered DESC LIMIT ?",
        (agent, before or time.time() + 1, agent, limit),
    )
    names = ("id", "sender", "priority", "body", "delivered")
    return [dict(zip(names, r, strict=True)) for r in cur]


def pending_count(store: Store, agent: str) -> int:
    return int(
        store.execute(
            f"SELECT count(*) FROM messages WHERE agent = ? AND {PENDING_SQL}",
            (agent,),
        ).fetchone()[0]
    )


def waiting(store: Store, agent: str, now: float) -> tuple[int, int]:
    """The agent's messages that follow (queued and due, or in flight), and those held until
    a later time (``orch send --in``, ``--at``): told that these follow too, the agent waited
    for them, for hours perhaps. One past its TTL comes no more."""
    total, gone, later = store.execute(
        "SELECT count(*), coalesce(sum(CASE WHEN state = 'queued' AND expires <= ? THEN 1"
        " ELSE 0 END), 0), coalesce(sum(CASE WHEN state = 'queued' AND not_before > ?"
        " AND NOT coalesce(expires <= ?, FALSE) THEN 1 ELSE 0 END), 0) FROM messages"
        f" WHERE agent = ? AND {PENDING_SQL}",
        (now, now, now, agent),
    ).fetchone()
    return int(total) - int(gone) - int(later), int(later)


def checkpoint(
    store: Store, agent: str, cwd: str, settings: dict[str, Any], git_timeout: float
) -> dict[str, Any]:
    """What the agent was doing, saved before compaction."""
    activity = recent_activity(store, agent, int(settings["activity_kept"]))
    tools: dict[str, int] = {}
    for item in activity:
        if item["kind"] == "tool":
            tools[item["tool"] or "?"] = tools.get(item["tool"] or "?", 0) + 1
    failures = sum(1 for item in activity if item["kind"] == "tool" and not item["ok"])
    summary = ", ".join(f"{tool} {count}" for tool, count in sorted(tools.items()))
    git = git_state(cwd, git_timeout)
    edited = [i["target"] for i in activity if i["tool"] in ("Edit", "Write", "NotebookEdit")]
    return {
        "at": time.time(),
        "activity_summary": f"{sum(tools.values())} tool calls ({summary or 'none'}),"
        f" {failures} failed",
        "recent_commands": [i["target"] for i in activity if i["tool"] == "Bash"][:10],
        "branch": git["branch"] if git else None,
        "touched_files": list(dict.fromkeys(edited))[:20],
        "task": task_messages(store, agent),
        "pending": pending_count(store, agent),
    }


@hookimpl
def orch_text_left_out(ctx: HookContext) -> None:
    """A rebrief the reply left out (the texts before it took Claude Code's cap) is asked for
    again, as ``orch rebrief`` asks: the agent's next delivery point gives it."""
    store = _store(ctx)
    if store is not None and ctx.notes.get("rebriefed"):
        assert ctx.agent is not None
        update_context(store, ctx.agent, rebrief_pending=1)


@hookimpl
def orch_pre_compact(event: ev.PreCompact, ctx: HookContext) -> None:
    store = _store(ctx)
    if store is None:
        return
    assert ctx.agent is not None
    settings = _settings(ctx)
    data = checkpoint(store, ctx.agent, event.cwd or ctx.project_dir, settings,
                      git_timeout(ctx, settings))  # fmt: skip
    data["trigger"] = event.trigger
    update_context(store, ctx.agent, checkpoint_data=json.dumps(data), checkpoint_at=data["at"])


@hookimpl
def orch_before_restart(agent: str, ctx: HookContext) -> None:
    """Keep what the agent was doing, so its SessionStart after the restart is rebriefed."""
    settings = _settings(ctx)
    data = checkpoint(ctx.store, agent, ctx.project_dir, settings, git_timeout(ctx, settings))
    data["trigger"] = "restart"
    update_context(ctx.store, agent, checkpoint_data=json.dumps(data), checkpoint_at=data["at"])


@hookimpl
def orch_agent_spawned(agent: str, briefing: str | None, ctx: HookContext) -> None:
    """``orch spawn``: its briefing (``--brief``, else the one ``orch brief`` gave) is what its
    first SessionStart gives it. A name spawned again starts a new conversation: what an
    earlier agent of that name was given, the checkpoint saved before its last restart or
    compaction, what it did and the messages handed to it must not count for this one (its
    briefing was never given, or given as a restart of work it did not do, and its first
    rebrief showed the earlier one's work and tasks as its own)."""
    now = time.time()
    reset = {"last_briefing": None, "checkpoint_data": None, "checkpoint_at": None,
             "spawned_at": now}  # fmt: skip
    with ctx.store.transaction() as tx:
        tx.execute("DELETE FROM activity WHERE agent = ?", (agent,))
        past = tx.execute(
            "SELECT 1 FROM agent_context WHERE agent_id = ? UNION ALL"
            " SELECT 1 FROM messages WHERE agent = ? AND delivered IS NOT NULL LIMIT 1",
            (agent, agent),
        ).fetchone()
        if briefing is not None:
            _update_context(tx, agent, now, {"briefing_content": briefing, **reset})
        elif past:  # a name with no past keeps no row
            _update_context(tx, agent, now, reset)


@hookimpl(tryfirst=True)
def orch_session_start(event: ev.SessionStart, ctx: HookContext) -> str | None:
    store = _store(ctx)
    if store is None:
        return None
    assert ctx.agent is not None
    row = context_row(store, ctx.agent) or {}
    settings = _settings(ctx)
    cwd = event.cwd or ctx.project_dir
    if event.source == "compact":
        return rebrief(ctx, store, cwd, "compaction", event.transcript_path)
    recent = time.time() - float(settings["restore_within_hours"]) * 3600
    if event.source in ("startup", "resume") and (row.get("checkpoint_at") or 0) > recent:
        if event.source == "resume" and held(event.transcript_path):
            # `claude --continue` (each restart orch makes) takes up a conversation that
            # holds the briefing already: another copy at each restart would pile up in it
            ctx.log("restart rebrief left out: the resumed conversation holds one")
            return forced(ctx, event.transcript_path)
        return rebrief(ctx, store, cwd, "restart", event.transcript_path)
    if event.source == "startup" and row.get("briefing_content") and not row.get("last_briefing"):
        return rebrief(ctx, store, cwd, "briefing", event.transcript_path)
    if event.source == "clear" and row.get("briefing_content"):
        # `/clear` started a new conversation in the same process: Claude Code gives back its
        # CLAUDE.md, and the agent its briefing, or it no longer knows who it is
        return rebrief(ctx, store, cwd, "briefing", event.transcript_path)
    return forced(ctx, event.transcript_path)


#: How Claude Code's transcript records a briefing or rebrief of orch's (a SessionStart's
#: context, the first text of the hook's), and a compaction, after which the conversation
#: goes on from its summary alone.
GIVEN_MARKS = (
    b'"type":"hook_additional_context","content":["[orch rebrief: ',
    b'"type":"hook_additional_context","content":["[orch briefing: ',
)
COMPACTED_MARK = b'"subtype":"compact_boundary"'
#: How much of a transcript, from its end, is looked through for them; a conversation that
#: long since its last one is taken for compacted.
HELD_WITHIN = 32 * 1024 * 1024
HELD_CHUNK = 1024 * 1024


def held(transcript: str | None) -> bool:
    """Whether the conversation in ``transcript`` holds a briefing or rebrief of orch's since
    its last compaction: a ``resume`` takes that conversation up, and Claude Code gives the
    model the hook texts in it again. The path comes from a hook payload: anything but a
    regular file reads as nothing, without blocking."""
    import stat

    if not transcript:
        return False
    try:
        fd = os.open(transcript, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except (OSError, ValueError):
        return False
    marks = (*GIVEN_MARKS, COMPACTED_MARK)
    overlap = max(len(m) for m in marks) - 1
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return False
        size = end = info.st_size
        while end > 0 and size - end < HELD_WITHIN:  # from the end: the latest mark decides
            start = max(0, end - HELD_CHUNK)
            chunk = os.pread(fd, min(size, end + overlap) - start, start)
            found = max((chunk.rfind(m), m) for m in marks)
            if found[0] >= 0:
                return found[1] != COMPACTED_MARK
            end = start
        return False
    except OSError:
        return False
    finally:
        os.close(fd)


def forced(ctx: HookContext, transcript: str | None) -> str | None:
    """The rebrief ``orch rebrief AGENT`` asked for, once, at this delivery point."""
    store = _store(ctx)
    if store is None:
        return None
    assert ctx.agent is not None
    asked = store.execute(  # a read on every tool call; the write only when asked
        "SELECT 1 FROM agent_context WHERE agent_id = ? AND rebrief_pending <> 0", (ctx.agent,)
    ).fetchone()
    if asked is None:
        return None
    with store.transaction() as tx:
        cur = tx.execute(
            "UPDATE agent_context SET rebrief_pending = 0"
            " WHERE agent_id = ? AND rebrief_pending <> 0",
            (ctx.agent,),
        )
    if not cur.rowcount:  # another hook of the same agent took it
        return None
    return rebrief(ctx, store, ctx.project_dir, "request", transcript)


#: What brings a rebrief, and how its first line says so (a briefing is a new agent's first).
KINDS = {
    "compaction": "[orch rebrief: context restored after compaction]",
    "restart": "[orch rebrief: context restored after a restart]",
    "request": "[orch rebrief: context restored after a request (orch rebrief)]",
    "briefing": "[orch briefing: a new session]",
}
#: Rebriefs kept for ``orch stats``.
REBRIEFS_KEPT = 1000


def rebrief(ctx: HookContext, store: Store, cwd: str, kind: str, transcript: str | None) -> str:
    """The rebrief text for ``kind`` (of :data:`KINDS`): each section marked, the whole within
    the budget. It is recorded with where the transcript ended then, so ``orch stats`` can look
    for it there."""
    assert ctx.agent is not None
    settings = _settings(ctx)
    row = context_row(store, ctx.agent) or {}
    saved = json.loads(row["checkpoint_data"]) if row.get("checkpoint_data") else {}
    on = settings["sections"]
    now = time.time()
    sections: dict[str, str] = {}
    role = row.get("role") or settings["role"]
    if on["agent"]:
        sections["agent"] = (
            f"Agent: {ctx.agent}"
            + (f"; role: {shortened(role, AGENT_LINE_PART)}" if role else "")
            + f". Project: {shortened(ctx.project_dir, AGENT_LINE_PART)}."
        )
    briefing = row.get("briefing_content") or _read(ctx, settings["briefing_file"], "briefing_file")
    if on["briefing"] and briefing:
        sections["briefing"] = briefing.strip()
    if on["rules"]:
        rules = [(name, _read(ctx, name, "rules_files")) for name in settings["rules_files"]]
        text = "\n\n".join(f"({name})\n{body.strip()}" for name, body in rules if body)
        if text:
            sections["rules"] = text
    if on["activity"]:
        # only what happened before this hook: not the messages delivered beside the rebrief
        items = recent_activity(store, ctx.agent, int(settings["activity_shown"]), ctx.started)
        lines = [
            nested(f"- {age(now - i['ts'])} ago, {i['tool'] or i['kind']}: {i['target']}")
            + ("" if i["ok"] else " (failed)")
            for i in items
        ]
        if saved.get("activity_summary"):
            before = "the restart" if saved.get("trigger") == "restart" else "compaction"
            lines.insert(0, f"Before {before}: {saved['activity_summary']}.")
        if saved.get("recent_commands"):
            lines.append("Recent commands: " + "; ".join(saved["recent_commands"][:5]))
        if lines:
            sections["activity"] = "\n".join(lines)
    if on["task"]:
        tasks = task_messages(store, ctx.agent, before=ctx.started)
        if tasks:
            sections["task"] = "Latest messages handed to this agent, newest first:\n" + "\n".join(
                nested(
                    f"- {t['id']} from {t['sender'] or 'unknown'},"
                    f" {age(now - t['delivered'])} ago: {t['body'][:600]}"
                )
                for t in tasks
            )
    git = git_state(cwd, git_timeout(ctx, settings)) if on["git"] else None
    if git:
        sections["git"] = "\n".join(
            [
                f"Branch {git['branch']} at {git['head']}.",
                "Uncommitted: " + (", ".join(git["uncommitted"]) or "nothing"),
                "Last commits:",
                *git["last_commits"],
            ]
        )
    if on["pending"]:
        count, later = waiting(store, ctx.agent, now)
        sections["pending"] = (
            f"{count} message(s) wait in orch's queue; they follow."
            if count
            else "No messages wait in orch's queue."
        ) + (f" {later} more held until a later time." if later else "")
    titles = {
        "agent": "Agent",
        "briefing": "Briefing",
        "rules": "Project rules",
        "activity": "Recent activity",
        "task": "Current task",
        "git": "Git state (read now)",
        "pending": "Pending messages",
    }
    first = KINDS[kind]
    fit(sections, int(settings["budget"]) - length(first) - 30 * len(sections))
    given = {"agent": ctx.agent, "ts": now, "kind": kind, "transcript": transcript,
             "transcript_from": _size(transcript), "branch": git and git["branch"]}  # fmt: skip
    if kind in ("compaction", "restart") and saved:
        given.update(checkpoint_at=saved.get("at"), checkpoint_branch=saved.get("branch"),
                     checkpoint_files=json.dumps(saved.get("touched_files") or []))  # fmt: skip
    _given(store, given)
    ctx.notes["rebriefed"] = True
    # texts orch did not write (a message's, a commit's, CLAUDE.md) may quote a message's
    # header: in the transcript it would confirm that message, which the model may not have had
    return unmarked("\n\n".join([first, *(f"## {titles[n]}\n{t}" for n, t in sections.items())]))


def nested(text: str) -> str:
    """A list item holding text orch did not write (a message's body or sender, a prompt): its
    lines after the first indented, so that none passes for a section of the rebrief's own (a
    body's "## Briefing" line) or for another item."""
    return "\n  ".join(text.splitlines())


def _given(store: Store, rebrief: dict[str, Any]) -> None:
    """Record a rebrief, in the transaction that marks the agent briefed (a hook that
    rebriefs writes no more than before) and takes any ``orch rebrief`` request still pending,
    which this one answers (a compaction's rebrief, then no second one at the next tool call);
    the oldest beyond :data:`REBRIEFS_KEPT` go."""
    names = list(rebrief)
    briefed = {"last_briefing": rebrief["ts"], "rebrief_pending": 0}
    with store.transaction() as tx:
        _update_context(tx, rebrief["agent"], rebrief["ts"], briefed)
        (added,) = tx.execute(
            f"INSERT INTO rebriefs ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
            " RETURNING id",
            list(rebrief.values()),
        ).fetchone()
        if added % 100 == 0:
            tx.execute("DELETE FROM rebriefs WHERE id <= ?", (added - REBRIEFS_KEPT,))


def _size(path: str | None) -> int | None:
    try:
        return os.stat(path).st_size if path else None
    except OSError:
        return None


def fit(sections: dict[str, str], budget: int) -> None:
    """Trim sections, least important first and the agent line last, until the texts fit in
    ``budget`` characters as Claude Code counts them (any budget that holds a marker per
    section)."""
    marker = "\n[… trimmed to fit]"
    for name in TRIM_ORDER:
        excess = sum(length(t) for t in sections.values()) - budget
        if excess <= 0:
            return
        if name in sections:
            text = sections[name]
            keep = length(text) - excess - len(marker)
            sections[name] = head(text, keep) + marker if keep > 0 else marker.strip()


def _read(ctx: HookContext, name: str, setting: str) -> str:
    """A file named by ``setting``: a regular file, at most 200 kB, relative to the project and
    inside it once links are followed, unless the user's own config names it by an absolute
    path. A cloned repository (its ``orch.toml``, or a planted link such as ``CLAUDE.md ->
    ~/.ssh/id_rsa``) must not put files from outside into the model's context, around Claude's
    own read permissions."""
    if not name:
        return ""
    path = os.path.join(ctx.project_dir, name)
    if not (os.path.isabs(name) and not ctx.from_project(setting)):
        root, real = os.path.realpath(ctx.project_dir), os.path.realpath(path)
        if not real.startswith(root + os.sep):
            ctx.log("file left out: it is outside the project", level="warning",
                    setting=setting, path=name)  # fmt: skip
            return ""
    try:
        return paths.read_regular(path, 200_000).decode("utf-8", "replace")
    except OSError:
        return ""


# -- stats ------------------------------------------------------------------------------------

#: Rebriefs whose effect is looked into, newest first.
CHECKED = 100
#: How much of the transcript written after a rebrief is looked through for it.
FOUND_WITHIN = 256 * 1024
#: The tool calls after a rebrief that show whether the agent took up its work again.
NEXT_CALLS = 5
#: How long after a rebrief its agent's next tool call is looked for, and among how many runs.
NEXT_CALL_WITHIN = 3600.0
NEXT_CALL_AMONG = 20_000


@hookimpl
def orch_stats(since: float, now: float, agent: str | None, ctx: HookContext) -> dict[str, Any]:
    """How well rebriefing works: the rebriefs given in the window, by kind; and of the newest
    :data:`CHECKED`: how many the transcript shows the model took in, the time from each to
    the agent's next tool call (its PreToolUse), whether the agent's next :data:`NEXT_CALLS`
    tool calls name a file the checkpoint recorded as touched, and whether git showed the
    checkpoint's branch when it was given."""
    from orch_core.ops.metrics import first_run_at, summary
    from orch_core.queue import transcript_tail

    store = ctx.store
    mine = " AND agent = ?" if agent else ""
    rows = store.execute(
        "SELECT agent, ts, kind, transcript, transcript_from, branch, checkpoint_branch,"
        f" checkpoint_files FROM rebriefs WHERE ts >= ? AND ts <= ?{mine} ORDER BY id DESC",
        (since, now, *([agent] if agent else [])),
    ).fetchall()
    given = dict.fromkeys(KINDS, 0)
    found = [0, 0]  # checked, found
    files = [0, 0]
    branches = [0, 0]
    waits = []
    oldest_run = store.execute("SELECT ts FROM hook_runs ORDER BY id LIMIT 1").fetchone()
    for n, (who, ts, kind, transcript, start, branch, old_branch, old_files) in enumerate(rows):
        given[kind] = given.get(kind, 0) + 1
        if n >= CHECKED:
            continue
        if transcript and start is not None:
            text = transcript_tail(transcript, start, FOUND_WITHIN, ahead=True)
            if text:  # nothing written since yet, or the file is gone: not known
                found[0] += 1
                found[1] += KINDS[kind] in text
        if oldest_run and oldest_run[0] <= ts:
            low = first_run_at(store, ts)
            call = store.execute(
                "SELECT ts FROM hook_runs WHERE id >= ? AND id < ? AND agent = ?"
                " AND event = 'PreToolUse' AND ts <= ? ORDER BY id LIMIT 1",
                (low, low + NEXT_CALL_AMONG, who, ts + NEXT_CALL_WITHIN),
            ).fetchone()
            if call is not None:
                waits.append(call[0] - ts)
        touched = json.loads(old_files) if old_files else []
        reaches = store.execute("SELECT min(ts) FROM activity WHERE agent = ?", (who,)).fetchone()
        if touched and reaches[0] is not None and reaches[0] <= ts:
            targets = [
                target
                for (target,) in store.execute(
                    "SELECT target FROM activity WHERE agent = ? AND kind = 'tool' AND ts > ?"
                    " ORDER BY id LIMIT ?",
                    (who, ts, NEXT_CALLS),
                )
            ]
            if targets:
                files[0] += 1
                files[1] += any(path in target for path in touched for target in targets)
        if branch and old_branch:
            branches[0] += 1
            branches[1] += branch == old_branch
    return {
        "given": given,
        "total": len(rows),
        "in_transcript": {"checked": found[0], "found": found[1]},
        "to_next_tool_seconds": summary(waits),
        "same_files": {"checked": files[0], "yes": files[1]},
        "same_branch": {"checked": branches[0], "yes": branches[1]},
    }


# -- commands ---------------------------------------------------------------------------------


@hookimpl
def orch_register_commands(cli: click.Group) -> None:
    import click

    from orch_core import hosts
    from orch_core.cli.params import agent_name, briefing_text
    from orch_core.hook.context import Runtime

    def store() -> Store:
        return Runtime.open(os.environ, paths.project_dir(os.environ)).store

    def named(agent: str, *, known: bool = False) -> tuple[Store, str]:
        """The store, and the agent ``agent`` names from this host (``orch_core.hosts``); with
        ``known``, only one orch started, heard from or keeps a briefing for: a mistyped name
        would otherwise be told "will be rebriefed" and wait for an agent that never comes."""
        db = store()
        names = hosts.Names(db)
        agent = names.resolve(agent)
        if known and agent not in names.hosts and context_row(db, agent) is None:
            raise click.ClickException(
                f"no agent {agent}: orch neither started it nor heard from it"
            )
        return db, agent

    @cli.command("brief")
    @click.argument("agent", callback=agent_name)
    @click.argument("file", type=click.File("r", encoding="utf-8"))
    @click.option(
        "--role", help="The agent's role, shown first in every rebrief ('' takes it away)."
    )
    def brief_command(agent: str, file: Any, role: str | None) -> None:
        """Set AGENT's briefing from FILE ('-' for stdin): who it is and what to do."""
        text = briefing_text(file)
        fields: dict[str, Any] = {"briefing_content": text}
        if role is not None:
            fields["role"] = role.strip() or None
        db, agent = named(agent)
        update_context(db, agent, **fields)
        click.echo(f"briefing for {agent} set ({len(text)} characters)")

    @cli.command("context")
    @click.argument("agent", callback=agent_name)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def context_command(agent: str, as_json: bool) -> None:
        """What orch keeps for AGENT: briefing, checkpoint, recent activity."""
        db, agent = named(agent)
        row = context_row(db, agent) or {"agent_id": agent}
        if row.get("checkpoint_data"):
            row["checkpoint_data"] = json.loads(row["checkpoint_data"])
        row["activity"] = recent_activity(db, agent, 20)
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False, indent=2))
            return
        from orch_core.text import inert

        checkpoint = json.dumps(row.get("checkpoint_data"), ensure_ascii=False)
        click.echo(inert(f"agent {agent}, role {row.get('role') or '-'}"))
        click.echo(f"briefing: {len(row.get('briefing_content') or '')} characters")
        click.echo(inert(f"checkpoint: {checkpoint}"))
        for item in row["activity"]:
            click.echo(inert(f"  {item['kind']:<7} {item['tool'] or '':<10} {item['target']}"))

    @cli.command("rebrief")
    @click.argument("agent", callback=agent_name)
    def rebrief_command(agent: str) -> None:
        """Rebrief AGENT at its next delivery point (prompt, tool call or session start)."""
        db, agent = named(agent, known=True)
        update_context(db, agent, rebrief_pending=1)
        click.echo(f"{agent} will be rebriefed at its next hook")
