"""The experiments, by name. Each module has PRESETS, DEFAULT_PRESET, run, table, figure, write_outputs."""

from experiments import atlas, lm_cross, lm_owl, lm_regime, mnist_aux, mnist_trajectories, theorem_one_step

EXPERIMENTS = {mnist_aux.NAME: mnist_aux, theorem_one_step.NAME: theorem_one_step,
               mnist_trajectories.NAME: mnist_trajectories, atlas.NAME: atlas,
               lm_owl.NAME: lm_owl, lm_regime.NAME: lm_regime, lm_cross.NAME: lm_cross}
