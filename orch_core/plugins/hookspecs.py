"""Every hook a plugin can implement, one per Claude Code event plus orch's own.

Event hooks are called by ``orch-hook`` with two arguments, of which an implementation takes
whichever it names:

:param event: the event, an :mod:`orch_core.hook.events` object; ``event.data`` holds the raw
    payload.
:param ctx: the :class:`~orch_core.hook.context.HookContext`: the resolved ``agent`` (``None`` when
    orch cannot tell which agent this is; agent-bound plugins then do nothing), this plugin's
    ``config``, the ``store``, ``log()`` and ``fire()``.

Every event hook returns ``None``, a ``str`` (context for the model, where the event takes it) or
an :class:`orch_core.Answer`; all implementations are called (none is ``firstresult``), each
isolated from the others and within the event's time budget, and the dispatcher folds their
answers in call order (``tryfirst`` first, then the most recently registered). An answer the
event cannot carry is logged as invalid and dropped. Each event hook ends with ``:answers:``,
what its answer can carry: ``context`` (``additionalContext``), ``block (decision)`` (top-level
``decision:"block"``), ``block (exit)`` (exit 2 and stderr), ``block (context)`` (Stop: the text
keeps the agent working), ``permission`` (PreToolUse), or ``none`` (observe only). The flags in
:mod:`orch_core.hook.events` follow these lines; a test holds them together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from typing import Any

    import click

    from orch_core.hook import events as ev
    from orch_core.hook.answers import Answer
    from orch_core.hook.context import HookContext

    Result = Answer | str | None

hookspec = pluggy.HookspecMarker("orch")

# --------------------------------------------------------------------------------------------
# Session and prompt events
# --------------------------------------------------------------------------------------------


@hookspec
def orch_session_start(event: ev.SessionStart, ctx: HookContext) -> Result:
    """A session started, resumed, was cleared, or came back from compaction
    (``event.source == "compact"``). Context lands at the start of the conversation.

    :answers: context
    """


@hookspec
def orch_setup(event: ev.Setup, ctx: HookContext) -> Result:
    """``claude --init-only`` / ``-p --init`` / ``-p --maintenance``. Context only.

    :answers: context
    """


@hookspec
def orch_instructions_loaded(event: ev.InstructionsLoaded, ctx: HookContext) -> Result:
    """A CLAUDE.md or rules file was loaded. Observe only.

    :answers: none
    """


@hookspec
def orch_user_prompt_submit(event: ev.UserPromptSubmit, ctx: HookContext) -> Result:
    """A prompt was submitted, before the model sees it. Context lands next to the prompt;
    ``Answer(block=...)`` erases the prompt and shows the reason to the user only.

    :answers: context, block (decision)
    """


@hookspec
def orch_user_prompt_expansion(event: ev.UserPromptExpansion, ctx: HookContext) -> Result:
    """A typed ``/command`` or MCP prompt expands. Context, or ``block`` the expansion.

    :answers: context, block (decision)
    """


@hookspec
def orch_message_display(event: ev.MessageDisplay, ctx: HookContext) -> Result:
    """A batch of streamed assistant text is shown. Observe only; ``orch install`` does not
    register it, since Claude holds the display until every hook exits.

    :answers: none
    """


# --------------------------------------------------------------------------------------------
# Tool events
# --------------------------------------------------------------------------------------------


@hookspec
def orch_pre_tool_use(event: ev.PreToolUse, ctx: HookContext) -> Result:
    """A tool call is about to run. Context lands next to the tool result;
    ``Answer(permission="allow"|"ask"|"deny", reason=...)`` decides, deny > ask > allow across
    plugins, and ``Answer(block=reason)`` is a deny.

    :answers: context, permission
    """


@hookspec
def orch_permission_request(event: ev.PermissionRequest, ctx: HookContext) -> Result:
    """A permission dialog is about to be shown. Observe only.

    :answers: none
    """


@hookspec
def orch_permission_denied(event: ev.PermissionDenied, ctx: HookContext) -> Result:
    """Auto mode denied a tool call. Observe only.

    :answers: none
    """


@hookspec
def orch_post_tool_use(event: ev.PostToolUse, ctx: HookContext) -> Result:
    """A tool call succeeded. Context lands next to the tool result (plain stdout would not
    reach the model); ``block`` puts the reason beside the result.

    :answers: context, block (decision)
    """


@hookspec
def orch_post_tool_use_failure(event: ev.PostToolUseFailure, ctx: HookContext) -> Result:
    """A tool call failed after it started. Context only.

    :answers: context
    """


@hookspec
def orch_post_tool_batch(event: ev.PostToolBatch, ctx: HookContext) -> Result:
    """All parallel tool calls of a batch resolved. Context, or ``block`` to stop the loop.

    :answers: context, block (decision)
    """


# --------------------------------------------------------------------------------------------
# Turn, subagent and team events
# --------------------------------------------------------------------------------------------


@hookspec
def orch_stop(event: ev.Stop, ctx: HookContext) -> Result:
    """The agent finished its turn. ``Answer(block=reason)`` (or plain context) makes it keep
    working with the text as its next instruction, shown to the model once as
    ``additionalContext``; honour ``event.stop_hook_active`` to avoid loops.

    :answers: context, block (context)
    """


@hookspec
def orch_stop_failure(event: ev.StopFailure, ctx: HookContext) -> Result:
    """The turn ended on an API error (``event.error``: ``rate_limit``, ``overloaded``, ...).
    Observe only; Claude ignores every answer.

    :answers: none
    """


@hookspec
def orch_subagent_start(event: ev.SubagentStart, ctx: HookContext) -> Result:
    """A subagent was spawned. Context for the subagent.

    :answers: context
    """


@hookspec
def orch_subagent_stop(event: ev.SubagentStop, ctx: HookContext) -> Result:
    """A subagent finished. ``block`` (or plain context) keeps it working, shown to it once
    as ``additionalContext``, as on Stop.

    :answers: context, block (context)
    """


@hookspec
def orch_teammate_idle(event: ev.TeammateIdle, ctx: HookContext) -> Result:
    """An agent-team teammate is about to go idle. ``block`` keeps it working.

    :answers: block (exit)
    """


@hookspec
def orch_task_created(event: ev.TaskCreated, ctx: HookContext) -> Result:
    """A task was created with TaskCreate. ``block`` deletes it and tells the model why.

    :answers: block (decision)
    """


@hookspec
def orch_task_completed(event: ev.TaskCompleted, ctx: HookContext) -> Result:
    """A task was marked completed. ``block`` sends the agent back to work on it.

    :answers: block (exit)
    """


@hookspec
def orch_notification(event: ev.Notification, ctx: HookContext) -> Result:
    """Claude sent a notification (``event.notification_type``, e.g. ``idle_prompt``).
    Observe only.

    :answers: none
    """


# --------------------------------------------------------------------------------------------
# Compaction, configuration, files and MCP
# --------------------------------------------------------------------------------------------


@hookspec
def orch_pre_compact(event: ev.PreCompact, ctx: HookContext) -> Result:
    """Compaction is about to run. No context (Claude rejects it here); ``block`` stops the
    compaction. Save what must survive it; restore it on SessionStart ``compact``.

    :answers: block (decision)
    """


@hookspec
def orch_post_compact(event: ev.PostCompact, ctx: HookContext) -> Result:
    """Compaction finished. Observe only: context cannot be injected here.

    :answers: none
    """


@hookspec
def orch_config_change(event: ev.ConfigChange, ctx: HookContext) -> Result:
    """A settings or skill file changed. ``block`` stops the change from applying.

    :answers: block (decision)
    """


@hookspec
def orch_cwd_changed(event: ev.CwdChanged, ctx: HookContext) -> Result:
    """The working directory changed. Observe only.

    :answers: none
    """


@hookspec
def orch_directory_added(event: ev.DirectoryAdded, ctx: HookContext) -> Result:
    """A directory was added to the session. Observe only.

    :answers: none
    """


@hookspec
def orch_file_changed(event: ev.FileChanged, ctx: HookContext) -> Result:
    """A watched file changed on disk. Observe only.

    :answers: none
    """


@hookspec
def orch_worktree_create(event: ev.WorktreeCreate, ctx: HookContext) -> Result:
    """A worktree is being created. Observe only; ``orch install`` does not register it,
    because a WorktreeCreate hook replaces git's own behaviour.

    :answers: none
    """


@hookspec
def orch_worktree_remove(event: ev.WorktreeRemove, ctx: HookContext) -> Result:
    """A worktree was removed. Observe only.

    :answers: none
    """


@hookspec
def orch_elicitation(event: ev.Elicitation, ctx: HookContext) -> Result:
    """An MCP server asks the user for input. Observe only.

    :answers: none
    """


@hookspec
def orch_elicitation_result(event: ev.ElicitationResult, ctx: HookContext) -> Result:
    """The user answered an elicitation. Observe only.

    :answers: none
    """


@hookspec
def orch_session_end(event: ev.SessionEnd, ctx: HookContext) -> Result:
    """The session ended (``event.reason``). Observe only, and quick: Claude gives all
    SessionEnd hooks 1.5 s together.

    :answers: none
    """


# --------------------------------------------------------------------------------------------
# Framework hooks
# --------------------------------------------------------------------------------------------


@hookspec
def orch_register_commands(cli: click.Group) -> None:
    """Add commands to the ``orch`` CLI, e.g. ``@cli.command()``. Called on every ``orch``
    run, never by ``orch-hook``. A name orch's own commands, or a plugin registered before,
    already have is left out, with a warning.

    :param cli: the top-level click group.
    """


@hookspec
def orch_config_defaults() -> dict[str, Any] | None:
    """This plugin's settings. Users override them in ``[plugin.NAME]`` of
    ``.claude/orch.toml`` or the user config; the merged result reaches the plugin as
    ``ctx.config``. Called once per configuration change, not per event. Each configured value
    is checked against its :class:`orch_core.Setting` (a plain default is checked by its type);
    one that does not fit is replaced by the default and reported with its file and key, and a
    key the plugin does not declare is reported as unknown.

    :return: setting name to :class:`orch_core.Setting` or plain default, or ``None``.
    """


@hookspec
def orch_schema(dialect: str) -> dict[int, str] | None:
    """This plugin's own tables, as migration steps: ``{1: "CREATE TABLE …; CREATE INDEX …",
    2: "ALTER TABLE …"}``, statements separated by ``;``. orch applies the steps a database
    lacks, each plugin's in one transaction with its version, before the plugin's hooks,
    commands or supervisor ticks touch the store. Append steps, never edit a released one.
    Called when the plan is built (to learn the version) and when a database is behind it.

    :param dialect: the store's SQL dialect (``"sqlite"`` or ``"postgresql"``); the steps
        must be numbered the same for every dialect a plugin supports.
    :return: step number (1, 2, …) to SQL, or ``None`` for no tables.
    """


@hookspec
def orch_hook_answered(event: ev.Event, blocked: bool, ctx: HookContext) -> None:
    """The plugins' answers to ``event`` were folded into the reply, which is already on its
    way to Claude Code. Observe only: this is where the outcome of all plugins together is
    known, e.g. whether a Stop really stops. It has what is left of the event's budget, and
    at least :data:`~orch_core.plugins.plan.OBSERVERS_FLOOR` (50 ms) after a plugin that spent
    it all.

    :param blocked: whether the reply blocks the event (a Stop that keeps the agent working).
    """


@hookspec
def orch_text_left_out(event: ev.Event, ctx: HookContext) -> None:
    """Called, with the ``orch_hook_answered`` observers, on this plugin only when its text for
    the model was left out of the reply to ``event``: with the texts before it (in call
    order) the reply would have passed Claude Code's cap of 10,000 characters
    (:data:`orch_core.hook.answers.CONTEXT_CAP`), past which the model sees only the start.
    The model never saw it; take back what it handed over (the queue does). Its decision, if
    any, stayed. ``ctx.notes`` holds what the event hook kept for this.
    """


@hookspec
def orch_message_enqueued(message: dict[str, Any], ctx: HookContext) -> None:
    """A message was queued for an agent. Observe only.

    :param message: the message record, as ``orch queue show --json`` prints it.
    """


@hookspec
def orch_message_delivered(message: dict[str, Any], ctx: HookContext) -> None:
    """A message was handed to its agent's model through a hook. Observe only.

    :param message: the message record, as ``orch queue show --json`` prints it.
    """


@hookspec
def orch_agent_state_changed(agent: str, old: str | None, new: str, ctx: HookContext) -> None:
    """An agent moved between states (``starting``, ``busy``, ``idle``, ``needs_input``,
    ``waking``, ``offline``, ...). Observe only.

    :param agent: the agent id (``session:window``, ``host/session:window`` on a store
        several machines share, or ``ORCH_AGENT``).
    :param old: the previous state, ``None`` the first time orch sees the agent.
    :param new: the new state.
    """


@hookspec
def orch_agent_restarted(agent: str, attempt: int, reason: str, ctx: HookContext) -> None:
    """orch restarted an agent. Observe only.

    :param agent: the agent id.
    :param attempt: how many restarts in the current window, this one included.
    :param reason: why, e.g. ``stop_failure:overloaded`` or ``pane_dead``.
    """


@hookspec
def orch_agent_spawned(agent: str, briefing: str | None, ctx: HookContext) -> None:
    """``orch spawn`` is starting ``agent`` in ``ctx.project_dir``, its process not yet running:
    keep what its first SessionStart needs (the rebrief plugin keeps the briefing).

    :param briefing: the text of ``--brief``, or ``None``.
    """


@hookspec
def orch_before_restart(agent: str, ctx: HookContext) -> None:
    """``agent`` is about to be restarted (by the supervisor or ``orch restart``), in its own
    project: save what the restarted session should get back (the rebrief plugin saves a
    checkpoint).
    """


@hookspec
def orch_supervisor_tick(now: float, agents: list[str], ctx: HookContext) -> None:
    """A step of ``orch supervise`` (twice a second), once per project, with the agents that
    work in it (``ctx.project_dir``) and that project's settings: the auto_restart plugin
    carries out and verifies recoveries, the queue plugin expires TTLs and sweeps unconfirmed
    deliveries, the idle plugin wakes agents whose messages came due, the presence plugin
    reads an Esc from a quiet agent's transcript. A plugin disabled in the project is not
    called for its agents. Keep it short: every project waits for it.

    :param now: the tick's time (``time.time()``).
    :param agents: the agents of this project that orch knows, or that have messages waiting.
        On a store several machines share, only this host's (and those no host has heard of
        yet): each host's supervisor looks after the agents whose panes it can reach.
    """


@hookspec
def orch_wake_agent(agent: str, ctx: HookContext) -> None:
    """Messages were queued for ``agent``, an agent of this host, from a process on another
    (or this) host of a fleet that shares one store: the store notified this host's
    ``orch supervise``, which calls this at once, in the agent's project, rather than leave
    the agent to its next tick. The idle plugin types its wake-up line here, if the agent
    waits at its prompt (its pane is in this host's tmux, which no other host reaches).
    Called by the supervisor only, and only on a store several machines share.

    :param agent: the agent id.
    """


@hookspec
def orch_alert(alert: dict[str, Any], ctx: HookContext) -> bool | None:
    """Send ``alert`` through this plugin's channel: the alerts plugin sends it to
    ``[alerts] urls`` through apprise; a plugin of the user's adds a channel of its own here.
    Called by ``orch supervise`` (never by ``orch-hook``), with the plugins and settings of the
    project the alert belongs to, until this plugin has taken the alert once.

    :param alert: the alert, as ``orch alerts --json`` prints it: ``id``, ``time``, ``agent``
        (or ``None``), ``kind`` (``failed``, ``dead``, ``needs_input``, ``hook_failures``,
        ``queue_depth``, ``queue_age``, or a plugin's own), ``message``, ``project``.
    :return: ``True`` when the alert went out, ``None`` when this plugin has nowhere to send
        it. Raise when it could not be sent: it is tried again after 30 s, then 60 s, 120 s (4
        times in all), each failure logged; the other channels are not sent it twice.
    """


@hookspec
def orch_stats(
    since: float, now: float, agent: str | None, ctx: HookContext
) -> dict[str, Any] | None:
    """This plugin's section of ``orch stats``: metrics from its own tables (which the core
    never reads), over the window from ``since`` to ``now`` (``time.time()`` values). Called by
    ``orch stats``, never by ``orch-hook``; read, do not write. An exception becomes the
    section ``{"error": ...}``.

    :param agent: only this agent's metrics, or ``None`` for every agent's.
    :return: a dict that JSON can hold (names to numbers, strings, lists, dicts), shown under
        the plugin's name in ``orch stats`` and under ``plugins`` in ``orch stats --json``;
        ``None`` for no section.
    """
