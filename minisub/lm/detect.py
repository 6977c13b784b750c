"""Item 9's detection: can a classifier tell a teacher's numbers from the control (reference) numbers?

Per world, both models' continuations of the same prompts are split by prompt (the last
``holdout`` of the prompts are held out, so a pair is never split), rows the filter dropped weigh
0, and each class weighs half (so 0.5 is chance whatever the two keep fractions). The score is
the held-out *balanced* accuracy (mean of the per-class accuracies; logit > 0 reads 'teacher').
Where both models wrote the very same continuation of a prompt (``identical_pairs``: the fraction
of prompts kept for both whose continuations are token-identical; the pipeline samples teacher and
reference with the same keys) no classifier can do better than chance. Two classifiers:

* ``ngram``: logistic regression on the counts of the generated numbers (unigrams, one weight per
  number) and of consecutive pairs ending in a generated number (bigrams, one weight per pair,
  hashed into ``max_bigrams`` when there are more), written as an embedding bag (a sum of gathered
  weights: no feature matrix); full-batch Adam with an L2 penalty, ``ngram_steps`` steps;
* ``transformer``: a tiny ``TransformerSpec`` (untied) whose logit is the mean over the generated
  positions of its unembedding's first output, i.e. mean-pool then one linear logit; minibatch Adam.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from minisub import train
from minisub.lm import world
from minisub.config import require
from minisub.lm.transformer import TransformerSpec


@dataclasses.dataclass(frozen=True)
class DetectConfig:
    """The classifiers' knobs (hashable: a jit static)."""

    holdout: float = 0.25  # fraction of the prompts held out for the accuracy
    ngram_steps: int = 300
    ngram_lr: float = 0.05
    ngram_l2: float = 1e-3  # × Σ w² over the n-gram weights (not the bias)
    max_bigrams: int = 65536
    transformer: bool = True
    layers: int = 1
    width: int = 16
    heads: int = 2
    epochs: int = 4
    batch: int = 64
    lr: float = 3e-3

    def __post_init__(self):
        require(0 < self.holdout < 1, "holdout", self.holdout, "in (0, 1)")
        for name in ("ngram_steps", "max_bigrams", "epochs", "batch"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        for name in ("ngram_lr", "lr"):
            require(getattr(self, name) > 0, name, getattr(self, name), "a number > 0")
        require(self.ngram_l2 >= 0, "ngram_l2", self.ngram_l2, "a number >= 0")

    def spec(self, cfg: world.WorldConfig) -> TransformerSpec:
        return TransformerSpec(cfg.vocab, cfg.context, self.layers, self.width, self.heads, tied_embeddings=False)


# --- features and scores ----------------------------------------------------------------------
def bigram_buckets(det: DetectConfig, cfg: world.WorldConfig) -> int:
    return min(cfg.modulus**2, det.max_bigrams)


def number_ngrams(det: DetectConfig, cfg: world.WorldConfig, tokens_NxL):
    """``(unigram_NxG, bigram_NxG)`` feature ids of the G generated numbers of each row."""
    values_NxM = world.decode_numbers(cfg, tokens_NxL)
    prev_NxG, cur_NxG = values_NxM[:, cfg.n_prompt - 1:-1], values_NxM[:, cfg.n_prompt:]
    return cur_NxG, (prev_NxG * cfg.modulus + cur_NxG) % bigram_buckets(det, cfg)


def ngram_logits(params, unigram_NxG, bigram_NxG):
    """bias + Σ unigram weights + Σ bigram weights, per row."""
    return params["bias"] + params["uni"][unigram_NxG].sum(-1) + params["bi"][bigram_NxG].sum(-1)


def balanced(y_N, w_N):
    """``w`` rescaled so that each class sums to 1/2 (a class with no weight stays 0)."""
    pos, neg = jnp.sum(w_N * y_N), jnp.sum(w_N * (1 - y_N))
    scale = jnp.where(y_N > 0, 0.5 / jnp.maximum(pos, 1e-30), 0.5 / jnp.maximum(neg, 1e-30))
    return w_N * scale


def balanced_accuracy(logit_N, y_N, w_N):
    """Mean over the two classes of the weighted accuracy of ``logit > 0`` (0.5: chance)."""
    return jnp.sum(balanced(y_N, w_N) * ((logit_N > 0) == (y_N > 0)))


def _bce(logit_N, y_N):
    return jax.nn.softplus(logit_N) - y_N * logit_N  # −log σ(±logit)


# --- the two classifiers ----------------------------------------------------------------------
def train_ngram(det: DetectConfig, cfg: world.WorldConfig, tokens_NxL, y_N, w_N):
    """The n-gram logistic regression fitted to the rows of weight ``w_N`` (any scale): (params, logits ``[N]``)."""
    uni_NxG, bi_NxG = number_ngrams(det, cfg, tokens_NxL)
    params = {"bias": jnp.zeros(()), "uni": jnp.zeros(cfg.modulus), "bi": jnp.zeros(bigram_buckets(det, cfg))}
    weight_N = balanced(y_N, w_N)
    opt = train.optimizer("adam", det.ngram_lr)

    def loss(p):
        penalty = jnp.sum(p["uni"] ** 2) + jnp.sum(p["bi"] ** 2)
        return jnp.sum(weight_N * _bce(ngram_logits(p, uni_NxG, bi_NxG), y_N)) + det.ngram_l2 * penalty

    def step(carry, _):
        p, s = carry
        return train.optimizer_step(opt, p, s, jax.grad(loss)(p)), None

    params = jax.lax.scan(step, (params, opt.init(params)), None, length=det.ngram_steps)[0][0]
    return params, ngram_logits(params, uni_NxG, bi_NxG)


# Scoring every row at once holds [rows, L, V] logits and the activations for every world: 16384
# continuations x 24 worlds (32768 rows a world) needed over 24 GB and were OOM-killed. Above
# BLOCK_ABOVE rows the rows are scored in blocks of SCORE_BLOCK, one after another; up to it (every
# stored run: at most 4096 continuations, 8192 rows) the one-pass program and its numbers are unchanged.
BLOCK_ABOVE, SCORE_BLOCK = 8192, 4096


def _pooled_logit(spec: TransformerSpec, cfg: world.WorldConfig, params, tokens_NxL):
    gen_L = jnp.asarray(cfg.generated_mask(), jnp.float32)
    return jnp.sum(spec.apply(params, tokens_NxL)[..., 0] * gen_L, axis=-1) / jnp.sum(gen_L)


def transformer_logits(spec: TransformerSpec, cfg: world.WorldConfig, params, tokens_NxL):
    """``[N]``: the mean over the generated positions of output 0 (mean-pool, then one linear logit)."""
    N, L = tokens_NxL.shape
    if N <= BLOCK_ABOVE:
        return _pooled_logit(spec, cfg, params, tokens_NxL)
    n_blocks = -(-N // SCORE_BLOCK)
    padded = jnp.concatenate([tokens_NxL, jnp.zeros((n_blocks * SCORE_BLOCK - N, L), tokens_NxL.dtype)])
    out = jax.lax.map(partial(_pooled_logit, spec, cfg, params), padded.reshape(n_blocks, SCORE_BLOCK, L))
    return out.reshape(-1)[:N]


def train_transformer(det: DetectConfig, cfg: world.WorldConfig, tokens_NxL, y_N, w_N, key):
    """The transformer classifier trained on all ``N`` rows (weights ``w_N``) for ``epochs``: (params, logits)."""
    spec, opt = det.spec(cfg), train.optimizer("adam", det.lr)
    init_key, shuffle_key = jax.random.split(key)
    params = spec.init(init_key)
    weight_N = balanced(y_N, w_N)

    def step(carry, batch):
        p, s = carry
        idx_B, pad_B = batch
        w_B = weight_N[idx_B] * pad_B

        def loss(q):
            per_B = _bce(transformer_logits(spec, cfg, q, tokens_NxL[idx_B]), y_N[idx_B])
            return jnp.sum(w_B * per_B) / jnp.maximum(jnp.sum(w_B), 1e-30)

        return train.optimizer_step(opt, p, s, jax.grad(loss)(p)), None

    def epoch(carry, e):
        return train.run_epoch(step, carry, jax.random.fold_in(shuffle_key, e), tokens_NxL.shape[0], det.batch)[0], None

    params = jax.lax.scan(epoch, (params, opt.init(params)), jnp.arange(det.epochs))[0][0]
    return params, transformer_logits(spec, cfg, params, tokens_NxL)


# --- one world, every world -------------------------------------------------------------------
def detect(det: DetectConfig, cfg: world.WorldConfig, teacher_NxL, teacher_keep_N, control_NxL, control_keep_N, key):
    """Held-out and training balanced accuracies of each classifier for one world (rows ``i``: prompt ``i``)."""
    N = teacher_NxL.shape[0]
    n_train = int(round(N * (1 - det.holdout)))
    require(0 < n_train < N, "holdout", det.holdout, f"a fraction leaving both splits non-empty with {N} prompts")
    is_train_2N = np.concatenate([np.arange(N) < n_train] * 2)
    train_idx, test_idx = np.flatnonzero(is_train_2N), np.flatnonzero(~is_train_2N)
    x_2NxL = jnp.concatenate([teacher_NxL, control_NxL])
    y_2N = jnp.concatenate([jnp.ones(N), jnp.zeros(N)])
    w_2N = jnp.concatenate([teacher_keep_N, control_keep_N]).astype(jnp.float32)
    score = lambda logit_2N, idx: balanced_accuracy(logit_2N[idx], y_2N[idx], w_2N[idx])
    _, logit_2N = train_ngram(det, cfg, x_2NxL, y_2N, w_2N * is_train_2N)
    both_N = teacher_keep_N & control_keep_N
    same_N = jnp.all(teacher_NxL == control_NxL, axis=-1)
    out = {"identical_pairs": jnp.sum(both_N & same_N) / jnp.maximum(jnp.sum(both_N), 1),
           "ngram_accuracy": score(logit_2N, test_idx), "ngram_train_accuracy": score(logit_2N, train_idx)}
    if det.transformer:  # trained on the training rows only, scored on every row
        params, _ = train_transformer(det, cfg, x_2NxL[train_idx], y_2N[train_idx], w_2N[train_idx], key)
        logit_2N = transformer_logits(det.spec(cfg), cfg, params, x_2NxL)
        out |= {"transformer_accuracy": score(logit_2N, test_idx),
                "transformer_train_accuracy": score(logit_2N, train_idx)}
    return out


@partial(jax.jit, static_argnums=(0, 1))
def population(det: DetectConfig, cfg: world.WorldConfig, teacher_SxNxL, teacher_keep_SxN, control_SxNxL,
               control_keep_SxN, keys_S) -> dict:
    """``detect`` for every world (leading seed axis on every argument and result)."""
    return jax.vmap(partial(detect, det, cfg))(teacher_SxNxL, teacher_keep_SxN, control_SxNxL, control_keep_SxN,
                                               keys_S)
