"""What orch keeps: the SQLite store and its schema, backups and restores."""
