"""The hot path: ``orch-hook`` reads an event, runs the plugins within their budget and folds
their answers into the one reply Claude accepts.
"""
