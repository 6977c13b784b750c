"""The experiments, by name. Each module has PRESETS, DEFAULT_PRESET, run, table, figure, write_outputs."""

from experiments import mnist_aux

EXPERIMENTS = {mnist_aux.NAME: mnist_aux}
