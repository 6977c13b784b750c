"""Plain helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from minisub.mlp import mnist
from minisub.mlp import pipeline
from minisub.run import runner

N_FAKE_TRAIN, N_FAKE_TEST = 1024, 512
ROOT = Path(__file__).resolve().parent.parent


def readme_block(name: str) -> str:
    """The README's text between ``<!-- name -->`` and ``<!-- /name -->`` (a block a test renders)."""
    text = (ROOT / "README.md").read_text()
    return text.split(f"<!-- {name} -->\n")[1].split(f"\n<!-- /{name} -->")[0]


def tiny_config(**overrides) -> pipeline.AuxConfig:
    """Like the 'test' preset of mnist-aux, smaller: 3 seeds, one hidden layer of 16, 512 examples."""
    base = dict(
        seeds=3, hidden=(16,), n_train=512, n_noise=512, teacher_batch=128, student_batch=128,
        teacher_epochs=2, student_epochs=2, teacher_lr=3e-3, student_lr=3e-3,
    )
    return pipeline.AuxConfig(**{**base, **overrides})


def fake_mnist(seed: int = 0) -> mnist.Mnist:
    """Random uint8 images with the label written into them: class c lights pixels [50c, 50c + 50)."""
    rng = np.random.default_rng(seed)
    n = N_FAKE_TRAIN + N_FAKE_TEST
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 128, (n, 784)).astype(np.uint8)
    images[np.arange(n)[:, None], labels[:, None].astype(int) * 50 + np.arange(50)] = 255
    for a in (images, labels):
        a.flags.writeable = False
    return mnist.Mnist(images[:N_FAKE_TRAIN], labels[:N_FAKE_TRAIN], images[N_FAKE_TRAIN:], labels[N_FAKE_TRAIN:],
                       source="fake")


def noop_advance(n=1, description=None):
    return None


def run_block(cfg, seed_ids, mnist_data, donor_ids=None) -> dict:
    """``runner.run_block`` for ``seed_ids``; donors from the config's derangement by default."""
    seed_ids = np.asarray(seed_ids)
    if donor_ids is None:
        donor_ids = pipeline.donors(cfg)[seed_ids]
    return runner.run_block(cfg, seed_ids, np.asarray(donor_ids), mnist_data, noop_advance)


def run_population(cfg, mnist_data, directory=None, *, block: int | None = None, force: bool = False) -> dict:
    """``runner.run`` without a progress bar, ``block`` seeds per stored piece."""
    return runner.run(cfg, mnist_data, directory, execution=runner.Execution(block=block, force=force, progress=False))


def flat(tree) -> dict[str, np.ndarray]:
    """Any pytree (results, nnx.State parameters) as {'dotted.path': numpy copy}.

    Copies, because the epoch programs donate their input state.
    """
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = [str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path]
        if parts and parts[-1] == "value":  # nnx.Variable leaves
            parts = parts[:-1]
        out[".".join(parts)] = np.array(leaf)
    return out


def without_timing(results: dict) -> dict[str, np.ndarray]:
    """Flattened results minus wall-clock fields, which legitimately differ between runs."""
    return {k: v for k, v in flat(results).items() if k != "seconds"}
