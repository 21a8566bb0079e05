"""tmux, always through argv lists: never a shell string built from names, paths or messages.

A server is named by its socket path (``None``: the default server); ``ORCH_TMUX_SOCKET`` sets
the one orch spawns agents on.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess

from orch_core import paths

TYPE_CHECKING = False  # importing typing costs orch-hook ~7 ms

if TYPE_CHECKING:
    from collections.abc import Sequence

    from orch_core.storage.store import Store


class TmuxError(Exception):
    """A tmux command failed: its one-line error."""


def tmux(socket: str | None, *args: str, timeout: float = 5.0, stdin: str | None = None) -> str:
    """Run one tmux command and return its stdout."""
    argv = ["tmux", *(["-S", socket] if socket else []), *map(_one_argument, args)]
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise TmuxError(f"tmux {args[0]}: {exc}") from None
    if done.returncode != 0:
        raise TmuxError(f"tmux {args[0]}: {done.stderr.strip() or 'failed'}")
    return done.stdout


def _one_argument(arg: str) -> str:
    """``arg`` as tmux takes it as it is: tmux ends its command at an argument ending in ``;``
    (taken off), and runs the arguments after it as another command (a directory ``proj;``, a
    command ``sh -c 'make;' kill-server``), unless that ``;`` is escaped, ``\\;``."""
    return f"{arg[:-1]}\\;" if arg.endswith(";") else arg


class Draft(TmuxError):
    """A person's text, not sent yet, is in the pane's input box: a line typed and entered now
    would be sent joined to it, and Enter alone would send it unfinished."""


class Exited(TmuxError):
    """The pane's program exited back to the shell it was started from: a line typed there
    would run as a command."""


def type_line(
    pane: str, socket: str | None, text: str, state_dir: str, *, spare_draft: bool = False
) -> bool:
    """Type ``text`` into ``pane`` literally (``send-keys -l``), then press Enter as a separate
    key, holding the pane's lock so two senders never interleave. With ``spare_draft``, raise
    :class:`Draft` rather than type into an input box that holds someone's text, and
    :class:`Exited` into a shell whose program exited; a box that holds ``text`` already (its
    Enter was lost) gets only the Enter."""
    with _pane_lock(pane, socket, state_dir):
        try:
            leave_mode(pane, socket)
            if spare_draft and shell_in_front(pane, socket):
                raise Exited(f"tmux pane {pane}: a shell, its program exited")
            box = input_box(pane, socket) if spare_draft else None
            if box and box != text:
                raise Draft(f"tmux pane {pane}: its input box holds a person's text")
            if box != text:
                tmux(socket, "send-keys", "-t", pane, "-l", "--", text)
            tmux(socket, "send-keys", "-t", pane, "Enter")
            return True
        except (Draft, Exited):
            raise
        except TmuxError:
            return False


def press_enter(
    pane: str, socket: str | None, state_dir: str, *, only_for: str | None = None
) -> bool:
    """Press Enter alone in ``pane``, under its lock: a line typed while the program was not
    ready to take it stays in its input box until then. Given ``only_for`` (that line), raise
    :class:`Draft` rather than send an input box that holds other text."""
    with _pane_lock(pane, socket, state_dir):
        try:
            leave_mode(pane, socket)
            box = input_box(pane, socket) if only_for is not None else None
            if box and box != only_for:
                raise Draft(f"tmux pane {pane}: its input box holds a person's text")
            tmux(socket, "send-keys", "-t", pane, "Enter")
            return True
        except Draft:
            raise
        except TmuxError:
            return False


#: Claude Code's input box: a rule (``─``) above and below, and its first line starts with
#: its mark, U+276F (``!`` in shell mode, where an Enter runs the line as a command).
_RULE, _MARK = "\u2500", "\u276f"
_ESCAPE = re.compile(r"\x1b(?:\[([0-9;:?]*)[ -/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)?|.)")


def input_box(pane: str, socket: str | None) -> str | None:
    """The text in Claude Code's input box on ``pane``'s screen, as typed there and not sent
    (``""``: an empty box), or ``None`` where no such box shows (another program, a dialog, a
    program still starting). Claude shows a placeholder or a suggestion in an empty box, dim:
    dim text is not counted. Shell mode (``!``) counts as text even in an empty box."""
    screen = tmux(socket, "capture-pane", "-p", "-e", "-t", pane)
    plain = [_ESCAPE.sub("", line).strip() for line in screen.split("\n")]
    rules = [i for i, line in enumerate(plain) if line.startswith(_RULE) and not line.strip(_RULE)]
    for top, bottom in reversed(list(itertools.pairwise(rules))):
        first = plain[top + 1] if top + 1 < bottom else ""
        if first[:1] not in (_MARK, "!") or first[1:2].strip():
            continue
        if first[:1] == "!":
            return first
        lines = _undimmed(screen).split("\n")[top + 1 : bottom]
        lines[0] = lines[0].strip().removeprefix(_MARK)
        return "\n".join(line.strip() for line in lines).strip()
    return None


#: Shells a person starts Claude from (``/proc``'s names, a login shell's without its ``-``)
SHELLS = frozenset({"sh", "bash", "zsh", "fish", "dash", "ksh", "mksh", "tcsh", "csh", "ash"})


def shell_in_front(pane: str, socket: str | None) -> bool:
    """Whether only a shell is in the foreground of ``pane``'s terminal: the program started
    from it there (Claude) exited, or was killed. A wrapper script running Claude has it in
    its process group, and a shell running it as a job gives it the terminal: neither counts.
    Read from Linux's ``/proc`` (elsewhere: ``False``, as when it cannot be told)."""
    pid = tmux(socket, "display-message", "-p", "-t", pane, "#{pane_pid}").strip()
    front = _stat(pid)
    if front is None or not front[2].lstrip("-").isdigit() or int(front[2]) <= 0:
        return False  # no such process, or no terminal
    leader = _stat(front[2])
    if leader is not None and leader[0].lstrip("-") not in SHELLS:
        return False  # Claude, as a job of the shell or started in its place: no need to look
    try:
        entries = os.listdir("/proc")
    except OSError:
        return False
    names = []
    for entry in entries:
        fields = _stat(entry) if entry.isdigit() else None
        if fields is not None and fields[1] == front[2]:
            names.append(fields[0].lstrip("-"))
    return bool(names) and all(name in SHELLS for name in names)


def _stat(pid: str) -> tuple[str, str, str] | None:
    """Process ``pid``'s name, process group and its terminal's foreground group, or ``None``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as file:
            stat = file.read()
    except (OSError, ValueError):
        return None
    name = stat.partition("(")[2].rpartition(")")[0]
    fields = stat.rpartition(")")[2].split()  # state ppid pgrp session tty_nr tpgid ...
    return (name, fields[2], fields[5]) if len(fields) > 5 else None


def _undimmed(text: str) -> str:
    """``text`` from ``capture-pane -e`` without its escapes and its dim text, but its line
    breaks (an attribute holds on across lines). Claude draws its cursor in reverse video: on
    a placeholder's first letter, that one is not dim, and counts as the placeholder's."""
    cells: list[tuple[str, bool, bool]] = []  # each character: dim, reverse
    dim = reverse = False
    at = 0
    for found in [*_ESCAPE.finditer(text), None]:
        end = len(text) if found is None else found.start()
        cells += [(char, dim, reverse) for char in text[at:end]]
        if found is not None:
            at = found.end()
            if found.group(2) == "m":
                dim, reverse = _attributes(dim, reverse, found.group(1) or "0")
    out = []
    for i, (char, dim, reverse) in enumerate(cells):
        after = cells[i + 1] if i + 1 < len(cells) else ("\n", False, False)
        if reverse and after[0] != "\n":
            dim = after[1]
        out.append(char if char == "\n" or not dim else "")
    return "".join(out)


def _attributes(dim: bool, reverse: bool, params: str) -> tuple[bool, bool]:
    """Whether text is dim, and reverse, after an SGR sequence with ``params`` (``38;5;2`` is
    a colour)."""
    codes = params.replace(":", ";").split(";")
    i = 0
    while i < len(codes):
        code = codes[i] or "0"
        if code in ("38", "48", "58"):  # a colour: 5;N or 2;R;G;B follow
            i += 3 if codes[i + 1 : i + 2] == ["5"] else 5
            continue
        if code == "0":
            dim = reverse = False
        elif code in ("2", "22"):
            dim = code == "2"
        elif code in ("7", "27"):
            reverse = code == "7"
        i += 1
    return dim, reverse


def paste_text(pane: str, socket: str | None, text: str, state_dir: str) -> bool:
    """Paste ``text`` of any length and any number of lines as one input (bracketed paste, so
    its newlines do not submit it line by line), then press Enter; under the pane's lock. The
    text reaches tmux on stdin, never in an argument, and made inert: no control character in
    it can end the paste early or act as a key. Raise :class:`Draft` rather than paste into an
    input box that holds someone's text."""
    from orch_core.text import inert

    buffer = f"orch-{os.getpid()}"
    with _pane_lock(pane, socket, state_dir):
        try:
            leave_mode(pane, socket)
            if input_box(pane, socket):
                raise Draft(f"tmux pane {pane}: its input box holds a person's text")
            tmux(socket, "load-buffer", "-b", buffer, "-", stdin=inert(text))
            tmux(socket, "paste-buffer", "-p", "-d", "-b", buffer, "-t", pane)
            tmux(socket, "send-keys", "-t", pane, "Enter")
            return True
        except Draft:
            raise
        except TmuxError:
            return False


def leave_mode(pane: str, socket: str | None) -> None:
    """Take ``pane`` out of copy mode (or any other mode), where a user reading back through
    it left it: there, keys are copy-mode commands (Enter copies, ``q`` quits) and the program
    gets none of them. A tmux without ``copy-mode -q`` (before 3.2) types as before."""
    try:
        tmux(socket, "copy-mode", "-q", "-t", pane)
    except TmuxError:
        pass  # a pane gone fails the keys that follow


class _pane_lock:
    """One writer per pane at a time, across processes (``flock`` on a file per pane)."""

    def __init__(self, pane: str, socket: str | None, state_dir: str) -> None:
        name = "".join(c if c.isalnum() else "_" for c in f"{socket or 'default'}{pane}")
        folder = os.path.join(state_dir, "locks")
        paths.ensure_own_dir(folder)
        self.path = os.path.join(folder, f"{name}.lock")

    def __enter__(self) -> None:
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)


#: The pane option that says which agent a pane is: tmux numbers panes from ``%0`` again on a
#: new server, so a pane id alone may name someone else's pane after a restart.
MARK = "@orch_agent"


def pane_state(
    pane: str, socket: str | None, agent: str | None = None, since: float | None = None
) -> str:
    """``alive``, ``dead`` (its program exited, the pane remains) or ``gone``. Given ``agent``,
    a pane that is not that agent's counts as ``gone``: one marked for another, or an unmarked
    one unless its server already ran at ``since`` (when the pane id was recorded: ids are
    unique for a server's life; tmux gives its start in whole seconds). Panes orch's hooks
    reported, and those orch started before it marked them, have no mark."""
    try:
        out = tmux(socket, "display-message", "-p", "-t", pane,
                   f"#{{pane_id}} #{{pane_dead}} #{{start_time}} #{{{MARK}}}")  # fmt: skip
    except TmuxError:
        return "gone"
    found, dead, started, mark = [*out.rstrip("\n").split(" ", 3), "", "", ""][:4]
    if found != pane:
        return "gone"
    if agent is not None and mark != agent:
        older = since is not None and started.isdigit() and int(started) <= since
        if mark or not older:
            return "gone"
    return "dead" if dead == "1" else "alive"


def reported_pane(store: Store, agent: str, host: str) -> tuple[str, str | None] | None:
    """The pane (and server) of ``agent``'s current session (else its latest) on ``host``,
    while it is still the agent's (:func:`pane_state`): after tmux restarts, that id may name
    another program's pane. The agent's hooks spoke from there at its ``last_seen``, so a
    server started later is another's."""
    from orch_core.storage.store import CURRENT_SESSION_FIRST

    row = store.execute(
        "SELECT s.pane, s.tmux_socket, s.host, s.created, a.last_seen FROM sessions s"
        " LEFT JOIN agents a ON a.id = s.agent WHERE s.agent = ? AND s.pane IS NOT NULL"
        f" ORDER BY {CURRENT_SESSION_FIRST} LIMIT 1",
        (agent,),
    ).fetchone()
    if row is None or (store.shared and row[2] not in (None, host)):  # none: no host said
        return None
    pane, socket, _, created, seen = row
    if pane_state(pane, socket, agent, since=max(float(created), float(seen or 0))) == "gone":
        return None
    return pane, socket


def window_pane(window: str, socket: str | None) -> str | None:
    """The active pane of the window that is ``session:index`` exactly (as an agent without
    hooks is named), else ``None``: as a target, tmux takes a session whose name only starts
    with that one's (``proj`` for ``project``), and a window by its name when none has that
    index."""
    try:
        out = tmux(socket, "display-message", "-p", "-t", f"={window}",
                   "#{pane_id} #{session_name}:#{window_index}")  # fmt: skip
    except TmuxError:
        return None
    pane, _, found = out.rstrip("\n").partition(" ")
    return pane if found == window else None


def mark(pane: str, socket: str | None, agent: str) -> None:
    """Mark ``pane`` as ``agent``'s (an option tmux keeps with the pane, through respawns;
    ``set-option`` without ``-F`` expands no formats in the name)."""
    tmux(socket, "set-option", "-p", "-t", pane, MARK, agent)


def server_of(pane: str, socket: str | None) -> str:
    """The socket of the server ``pane`` is on. Without one, tmux takes the server of the
    caller's ``$TMUX`` (else its default): kept as ``None``, the pane would be looked for on
    another server by a command run from another terminal, or a supervisor started there."""
    return tmux(socket, "display-message", "-p", "-t", pane, "#{socket_path}").rstrip("\n")


def literal(value: str) -> str:
    """``value`` as tmux must receive it where it expands formats (session and window names,
    start directories): ``#(cmd)`` there runs ``cmd`` through a shell, and ``##`` is a plain
    ``#``. Targets (``-t``), ``-e`` values, ``send-keys -l`` text and the command's argv are
    taken as they are."""
    return value.replace("#", "##")


def env_flags(env: dict[str, str]) -> list[str]:
    flags = []
    for key, value in sorted(env.items()):
        flags += ["-e", f"{key}={value}"]
    return flags


def exec_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` as tmux runs it without a shell: tmux hands a command of one word to ``sh -c``,
    where a directory's name in it (``/src/$(rm -rf ~)/run.sh``) would run, so one word goes
    to a fixed ``sh -c 'exec "$@"'`` as an argument, which runs it as it is (``env`` would take
    a path with ``=`` in it, ``/src/key=value/run.sh``, for a variable)."""
    return ["sh", "-c", 'exec "$@"', "sh", *argv] if len(argv) == 1 else list(argv)


def start(
    socket: str | None,
    session: str,
    window: str,
    cwd: str,
    env: dict[str, str],
    argv: Sequence[str],
) -> str:
    """Start ``argv`` in a new window (and the session if needed); return its pane id. The
    window keeps a dead pane (``remain-on-exit``), so a crash can be seen and restarted in
    place."""
    common = ["-d", "-P", "-F", "#{pane_id}", "-n", literal(window), "-c", literal(cwd)]
    common += env_flags(env)
    run = exec_argv(argv)
    try:
        tmux(socket, "has-session", "-t", f"={session}")
    except TmuxError:
        pane = tmux(socket, "new-session", "-s", literal(session), *common, "--", *run).strip()
        # new-session's -e also sets the session's environment: a window opened there later
        # by hand would inherit ORCH_AGENT and answer as this agent, taking its messages
        try:
            for key in sorted(env) if pane else ():
                tmux(socket, "set-environment", "-t", f"={session}", "-u", key)
        except TmuxError:
            _ended_at_once(pane, socket, argv)  # the session (and server) went with its window
            raise
    else:
        pane = tmux(socket, "new-window", "-t", f"={session}:", *common, "--", *run).strip()
    if not pane:  # tmux exits 0 when it cannot create its server (a socket in no folder)
        raise TmuxError(f"tmux new-session: no server could be started at {socket or 'its socket'}")
    try:
        tmux(socket, "set-option", "-w", "-t", pane, "remain-on-exit", "on")
    except TmuxError:
        _ended_at_once(pane, socket, argv)
        raise
    return pane


def _ended_at_once(pane: str, socket: str | None, argv: Sequence[str]) -> None:
    """Say that the program in ``pane`` ended before tmux was told to keep its window, if so:
    tmux's own error ("no such window", "server exited unexpectedly") would not say it."""
    if pane_state(pane, socket) == "gone":
        raise TmuxError(f"{argv[0]} exited at once, and its window closed") from None


def respawn(
    pane: str, socket: str | None, cwd: str, env: dict[str, str], argv: Sequence[str]
) -> None:
    """Kill whatever runs in ``pane`` and start ``argv`` there instead."""
    tmux(socket, "respawn-pane", "-k", "-t", pane, "-c", literal(cwd), *env_flags(env), "--",
         *exec_argv(argv))  # fmt: skip
