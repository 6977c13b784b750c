"""Theorem 1 and its measurements: one-step quantities (matrix-free), trajectories."""
