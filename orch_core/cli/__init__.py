"""The ``orch`` command line: the group and its commands, install, doctor."""

import os
import sys


def run() -> None:
    """Entry point of ``orch``. ``orch send`` in its plain forms skips click, whose import
    costs each message more than storing it (:func:`orch_core.cli.send.quick`); everything
    else is the click group's (:func:`orch_core.cli.main.main`)."""
    if sys.stdin is None:  # started with stdin closed (<&-): '-' reads nothing, as when empty
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - for the process's life
    if sys.argv[1:2] == ["send"]:
        from orch_core.cli import send

        status = send.quick(sys.argv[2:])
        if status is not None:
            sys.exit(status)
    from orch_core.cli.main import main

    main()
