"""What operators look at: the metrics of ``orch stats`` and the log of ``orch logs``."""
