"""The ``orch`` command line: the group and its commands, install, doctor."""

import sys


def run() -> None:
    """Entry point of ``orch``. ``orch send`` in its plain forms skips click, whose import
    costs each message more than storing it (:func:`orch_core.cli.send.quick`); everything
    else is the click group's (:func:`orch_core.cli.main.main`)."""
    if sys.argv[1:2] == ["send"]:
        from orch_core.cli import send

        status = send.quick(sys.argv[2:])
        if status is not None:
            sys.exit(status)
    from orch_core.cli.main import main

    main()
