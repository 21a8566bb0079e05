"""Agents orch runs: launch specs, the recovery ladder, ``orch supervise``, and every tmux
call.
"""
