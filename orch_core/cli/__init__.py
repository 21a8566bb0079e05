"""The ``orch`` command line: the group and its commands, install, doctor."""

import os
import sys


def run() -> None:
    """Entry point of ``orch``. ``orch send`` in its plain forms skips click, whose import
    costs each message more than storing it (:func:`orch_core.cli.send.quick`); everything
    else is the click group's (:func:`orch_core.cli.main.main`)."""
    if sys.stdin is None:  # started with stdin closed (<&-): '-' reads nothing, as when empty
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - for the process's life
    try:
        if sys.argv[1:2] == ["send"]:
            from orch_core.cli import send

            status = send.quick(sys.argv[2:])
            if status is not None:
                sys.exit(status)
        from orch_core.cli.main import main

        main()
    except KeyboardInterrupt:  # before click runs (its imports, plugins' commands): as it says it
        sys.stderr.write("\nAborted!\n")
        raise SystemExit(1) from None
    finally:
        _settle_stdout()


def _settle_stdout() -> None:
    """Write out what stdout still holds. When it cannot take it (a reader gone, a full disk:
    the command met it as it wrote, and said so), what is left is dropped and the exit is 1,
    as click ends a command on a closed pipe, where the interpreter's exit would try again,
    with a traceback, and exit 120."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise SystemExit(1) from None
