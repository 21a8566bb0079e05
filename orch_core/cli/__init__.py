"""The ``orch`` command line: the group and its commands, install, doctor."""
