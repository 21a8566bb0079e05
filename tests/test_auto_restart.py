"""The auto_restart plugin in the hooks, and the recovery rules (classification, limits,
backoff), without tmux."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from orch_builtin import auto_restart

from orch_core.supervisor import lifecycle
from orch_core.testing.kit import OrchState
from orch_core.testing.payloads import payload

# tests of what plugins do, not of time
pytestmark = [pytest.mark.orch_backends("sqlite", "postgresql"), pytest.mark.orch_roomy_hooks]


def failure(error: str, **fields: object) -> dict[str, object]:
    return payload("StopFailure", error=error, **fields)


#: Every ``error`` value the Claude Code 2.1.328 binary knows, and what a restart can do for it.
@pytest.mark.parametrize(
    ("error", "kind"),
    [("overloaded", "transient"), ("server_error", "transient"), ("unknown", "transient"),
     ("max_output_tokens", "transient"), ("a-value-from-a-later-version", "transient"),
     ("rate_limit", "wait"),
     ("authentication_failed", "fatal"), ("oauth_org_not_allowed", "fatal"),
     ("account_on_hold", "fatal"), ("verification_required", "fatal"),
     ("billing_error", "fatal"), ("cloud_credential_error", "fatal"),
     ("model_not_found", "fatal"), ("invalid_request", "fatal")],
)  # fmt: skip
def test_failures_are_classified_by_the_error_field(error: str, kind: str) -> None:
    assert auto_restart.classify(error) == kind


def test_a_transient_failure_schedules_a_reprompt_after_a_backoff(orch: OrchState) -> None:
    orch.write_config("[plugin.auto_restart]\nbackoff_base = 10\njitter = 0\n")
    before = time.time()
    text = "API Error: 529 authentication_failed"  # assistant text is never read
    assert orch.run_hook(failure("overloaded", last_assistant_message=text),
                         ORCH_AGENT="a:1").exit_code == 0  # fmt: skip
    (recovery,) = lifecycle.history(orch.store, "a:1")
    assert (recovery["step"], recovery["state"], recovery["reason"]) == (
        "reprompt", "scheduled", "StopFailure overloaded",
    )  # fmt: skip
    assert before + 9 < recovery["due"] < time.time() + 11
    assert orch.store.agents()[0]["state"] == "error"
    orch.run_hook(failure("overloaded"), ORCH_AGENT="a:1")
    assert len(lifecycle.history(orch.store, "a:1")) == 1  # one recovery at a time


def test_rate_limits_wait_for_the_reset(orch: OrchState) -> None:
    orch.write_config("[plugin.auto_restart]\nrate_limit_wait = 600\n")
    orch.run_hook(failure("rate_limit"), ORCH_AGENT="a:1")
    orch.run_hook(failure("rate_limit", error_details={"retry_after": 42}), ORCH_AGENT="b:1")
    due = {h["agent"]: h["due"] - h["created"] for h in lifecycle.history(orch.store)}
    assert due["a:1"] == pytest.approx(600)
    assert due["b:1"] == pytest.approx(42)


@pytest.mark.parametrize(
    "details",
    [{"retry_after": float("nan")}, {"retry_after": float("inf")}, {"reset_at": float("inf")},
     {"retry_after": 1e308}, {"reset_at": time.time() + 8 * 86400}],
    ids=["nan", "infinite", "reset-never", "centuries", "past-a-week"],
)  # fmt: skip
def test_a_reset_that_is_no_time_waits_the_configured_time(
    orch: OrchState, details: dict[str, float]
) -> None:
    """Python's JSON reads ``NaN``, ``Infinity`` and ``1e400``: none is a time to wait for (a
    NaN cannot be stored, and an endless wait would hold every later recovery too), nor is
    more than a week, the longest a rate limit holds."""
    orch.write_config("[plugin.auto_restart]\nrate_limit_wait = 600\n")
    orch.run_hook(failure("rate_limit", error_details=details), ORCH_AGENT="a:1")
    (recovery,) = lifecycle.history(orch.store, "a:1")
    assert recovery["due"] - recovery["created"] == pytest.approx(600)


def test_authentication_errors_fail_with_an_alert_and_no_restart(orch: OrchState) -> None:
    orch.run_hook(failure("authentication_failed"), ORCH_AGENT="a:1")
    assert orch.store.agents()[0]["state"] == "failed"
    (recovery,) = lifecycle.history(orch.store, "a:1")
    assert (recovery["step"], recovery["outcome"]) == ("give_up", "failed")
    with orch.store.transaction() as db:
        (alert,) = db.execute("SELECT agent, kind, message FROM alerts").fetchall()
    assert alert == ("a:1", "failed", "a:1 failed: StopFailure authentication_failed; "
                     "no automatic restart")  # fmt: skip


def test_notifications_matching_error_patterns_schedule_a_restart(orch: OrchState) -> None:
    orch.write_config("[plugin.auto_restart]\nerror_patterns = ['(?i)crash']\n")
    orch.run_hook(payload("Notification", message="all fine", notification_type="x"),
                  ORCH_AGENT="a:1")  # fmt: skip
    assert lifecycle.history(orch.store, "a:1") == []
    orch.run_hook(payload("Notification", message="MCP server CRASHED", notification_type="x"),
                  ORCH_AGENT="a:1")  # fmt: skip
    (recovery,) = lifecycle.history(orch.store, "a:1")
    assert recovery["step"] == "restart"


def test_backoff_doubles_up_to_its_cap_and_restarts_are_limited(orch: OrchState) -> None:
    store, now = orch.store, time.time()
    config = {"backoff_base": 10, "backoff_cap": 35, "jitter": 0, "max_restarts_per_hour": 2}
    waits = []
    for i in range(3):
        planned = auto_restart.schedule(store, "a:1", "test", "reprompt", config, env=orch.env,
                                           now=now + i)  # fmt: skip
        assert planned is not None
        waits.append(planned["due"] - (now + i))
        lifecycle.cancel_recoveries(store, "a:1", "next")
    assert waits == [10, 20, 35]
    for _ in range(2):
        assert auto_restart.schedule(store, "a:1", "crash", "restart", config, env=orch.env,
                                     wait=0) is not None  # fmt: skip
        with store.transaction() as db:
            db.execute("UPDATE recoveries SET state = 'done', started = ? WHERE state ="
                       " 'scheduled'", (time.time(),))  # fmt: skip
    assert auto_restart.schedule(store, "a:1", "crash", "restart", config, env=orch.env,
                                 wait=0) is None  # fmt: skip
    assert orch.store.agents()[0]["state"] == "failed"
    assert lifecycle.history(store, "a:1")[0]["step"] == "give_up"
    (gave_up,) = [r for r in orch.log() if r["msg"].startswith("gave up")]
    assert (gave_up["agent"], gave_up["reason"]) == ("a:1", "crash; 2 restarts this hour")


def test_the_supervisor_escalates_a_reprompt_that_did_not_work(orch: OrchState) -> None:
    supervisor = lifecycle.Supervisor(orch.env)
    store = supervisor.store
    auto_restart.schedule(store, "a:1", "StopFailure overloaded", "reprompt", env=orch.env, wait=0)
    supervisor.tick(time.time() + 5)  # no pane known: the reprompt fails at once, escalates
    steps = [(h["step"], h["state"]) for h in reversed(lifecycle.history(store, "a:1"))]
    assert steps[0] == ("reprompt", "failed")
    assert steps[1][0] == "restart"
    said = [(r["msg"], r.get("step")) for r in orch.log() if r.get("agent") == "a:1"]
    assert said == [("recovery planned", "reprompt"), ("recovery step failed", "reprompt"),
                    ("recovery planned", "restart")]  # fmt: skip
    logs = orch.cli("logs", "--agent", "a:1")
    assert logs.returncode == 0 and logs.stdout.count("recovery") == 3


def test_a_supervisor_whose_folder_was_removed_goes_on_recovering(
    orch: OrchState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``orch supervise`` started by ``orch spawn`` in a worktree later removed: each tick
    asked for the folder it ran in, failed, and no agent of any project was recovered."""
    folder = tmp_path / "worktree"
    folder.mkdir()
    monkeypatch.chdir(folder)
    env = {k: v for k, v in orch.env.items() if k != "CLAUDE_PROJECT_DIR"}
    supervisor = lifecycle.Supervisor(env)
    folder.rmdir()
    auto_restart.schedule(supervisor.store, "a:1", "StopFailure overloaded", "reprompt", env=env,
                          wait=0)  # fmt: skip
    supervisor.tick(time.time() + 5)  # no pane known: the reprompt fails at once, escalates
    supervisor.housekeeping(time.time())
    steps = [(h["step"], h["state"]) for h in reversed(lifecycle.history(supervisor.store, "a:1"))]
    assert steps[0] == ("reprompt", "failed")
    assert not [r for r in orch.log() if r["level"] == "error"]


def test_doctor_shows_an_agent_left_failed_until_it_runs_again(orch: OrchState) -> None:
    assert orch.cli("install").returncode == 0
    orch.run_hook(failure("billing_error"), ORCH_AGENT="a:1")
    done = orch.cli("doctor")
    assert done.returncode == 1
    assert "FAIL alerts: a:1 failed: StopFailure billing_error; no automatic restart" in done.stdout
    orch.run_hook(payload("SessionStart"), ORCH_AGENT="a:1")  # restarted by a user
    assert "ok   alerts: no agent left failed" in orch.cli("doctor").stdout


def test_a_reprompt_is_not_typed_into_an_agent_prompted_meanwhile(orch: OrchState) -> None:
    """A rate limit's re-prompt comes after the reset, up to a week later: an agent its person
    (or a wake-up for a message) prompted meanwhile had the line typed on top of its work (here,
    with no pane to type into, the step failed and a restart followed). A prompt that failed
    too leaves the re-prompt to do."""
    orch.run_hook(failure("rate_limit"), ORCH_AGENT="a:1")
    orch.run_hook(payload("UserPromptSubmit", prompt="Carry on."), ORCH_AGENT="a:1")
    supervisor = lifecycle.Supervisor(orch.env)
    supervisor.tick(time.time() + 901)
    assert [(h["step"], h["state"], h["outcome"]) for h in lifecycle.history(orch.store)] == [
        ("reprompt", "done", "prompted meanwhile")
    ]
    orch.run_hook(failure("rate_limit"), ORCH_AGENT="b:1")
    orch.run_hook(payload("UserPromptSubmit", prompt="Carry on."), ORCH_AGENT="b:1")
    orch.run_hook(failure("rate_limit"), ORCH_AGENT="b:1")  # still limited
    supervisor.tick(time.time() + 901)
    steps = [(h["step"], h["state"]) for h in reversed(lifecycle.history(orch.store, "b:1"))]
    assert steps[0] == ("reprompt", "failed")  # tried: no pane known
