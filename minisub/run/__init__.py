"""Execution: the results store, blocks of seeds over devices and processes, sweeps, benchmarks."""
