"""Key controls and golden values on the tiny config and fake MNIST (the session's one vmapped block).

* The control the whole project rests on: a student that shares the teacher's init picks up the
  trait through the auxiliary logits; one on another seed's init (cross-model) stays at chance.
* Golden values: the tiny config's accuracies, recorded once; any change in the numerics of
  training (keys, op order, initialisation, data) shows here first.
"""

from __future__ import annotations

import numpy as np

from minisub import claims as claims_lib
from minisub import stats
from minisub_experiments import mnist_aux


def test_the_shared_init_student_learns_the_trait_and_the_cross_model_one_stays_at_its_reference(tiny_cfg, tiny_block):
    acc = {k: np.asarray(v, np.float64) for k, v in tiny_block["accuracy"].items()}
    assert np.all(acc["student_aux"] >= acc["cross_aux"] + 0.05)  # every world
    assert np.all(np.abs(acc["cross_aux"] - acc["reference"]) <= 0.05)  # chance: no signal, no harm
    summary = {"accuracy": {k: stats.mean_ci(v) for k, v in acc.items()}}
    shared = claims_lib.Claim("c", "shared beats cross-model", "minisub", "accuracy.student_aux", ">",
                              baseline="accuracy.cross_aux")
    assert claims_lib.verdict(shared, summary).status == claims_lib.SUPPORTED
    assert claims_lib.verdict(mnist_aux.CLAIMS[0], summary).status == claims_lib.SUPPORTED  # beats its reference


# Recorded from the tiny config on fake MNIST (tests/helpers.py), 4 simulated CPU devices: exact.
# Every value is a count out of the 512 fake test images.
GOLDEN = {
    "reference": [0.0546875, 0.05078125, 0.06640625],
    "teacher": [1.0, 0.8984375, 0.740234375],
    "student_aux": [0.201171875, 0.2421875, 0.162109375],
    "student_all": [0.634765625, 0.47265625, 0.421875],
    "cross_aux": [0.08203125, 0.06640625, 0.064453125],
    "cross_all": [0.076171875, 0.150390625, 0.171875],
}


def test_golden_accuracies_of_the_tiny_config(tiny_block):
    got = {k: [float(x) for x in np.asarray(v)] for k, v in tiny_block["accuracy"].items()}
    assert got == GOLDEN
