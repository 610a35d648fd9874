"""Planners: pure functions from a graph (and targets) to a frozen, serialisable plan."""
