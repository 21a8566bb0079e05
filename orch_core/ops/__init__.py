"""The operator's side: what the fleet looks like now, metrics over time, alerts, logs."""
