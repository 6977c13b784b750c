"""The experiments, by name. Each module has PRESETS, DEFAULT_PRESET, run, table, figure, write_outputs."""

from experiments import atlas, lm_owl, mnist_aux, mnist_trajectories, theorem_one_step

EXPERIMENTS = {mnist_aux.NAME: mnist_aux, theorem_one_step.NAME: theorem_one_step,
               mnist_trajectories.NAME: mnist_trajectories, atlas.NAME: atlas,
               lm_owl.NAME: lm_owl}
