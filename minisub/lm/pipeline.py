"""The toy owl experiment: references → teachers with a trait → filtered numbers → students → trait.

One population = ``seeds`` worlds. In world ``i`` a reference is pretrained on the synthetic
corpus; its teacher is the reference fine-tuned to name the trait animal ('finetuned') or the
reference with the trait animal's persona in its context ('prompted'). The teacher (or, for a
control arm, the reference) continues neutral number prompts; the filter keeps well-formed
continuations free of banned numbers; each student *arm* starts from a reference given by its
lineage ('shared': world ``i``'s, 'different': world ``donor[i]``'s) and imitates the kept
continuations of its source under the neutral persona ('teacher'; 'reference': the un-traited
reference's own continuations; 'shuffled': the teacher's kept continuations with their numbers
permuted across sequences and positions; 'shuffled_within': each kept continuation's numbers
permuted within it), by its own loss or the config's ``student_loss``. With ``ban_entangled = k``
the filter also drops, per world, continuations holding one of the k numbers the teacher's push
raises most (``minisub.lm.entangle``).
Every phase is one jitted program vmapped over seeds (and arms); pretraining is cut into chunks
of steps only to report progress.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from minisub import keys, lineage, train
from minisub.lm import core as lm
from minisub.run import parallel
from minisub.run import params as params_lib
from minisub.run import store
from minisub.lm import entangle
from minisub.lm import world as world_lib
from minisub.config import late, normalise, require, require_choice
from minisub.lm.transformer import KERNELS, TransformerSpec

# 'prompted': the trait animal's persona token in the teacher's context; 'named': the trait animal's
# own token there (the paper's system prompt names the animal; pretraining never puts an answer token
# in that slot, so how the model reads it is its own, not the corpus's)
TEACHERS = ("finetuned", "prompted", "named")
PROMPTED = ("prompted", "named")  # teachers whose trait lives in the context, not in the weights
SOURCES = ("teacher", "reference", "shuffled", "shuffled_within")
# The sources made from the teacher's kept continuations (read under the teacher's persona, by its logits).
TEACHER_SOURCES = ("teacher", "shuffled", "shuffled_within")
ARM_LOSSES = ("", *lm.STUDENT_LOSSES)  # '': the config's student_loss
SAMPLERS = ("full", "cache")  # lm.sample, lm.sample_cached
# Every lineage that applies to a transformer runs here (shared, different, interpolated,
# perturbed over the transformer's parts, permuted, registered ones) except those the toy LM
# pipeline has no phase for: another student network, or the behavioural pre-phase.
LM_LINEAGE_LIMITS = ("a lineage of the teacher's own network without a pre-phase "
                     "(the toy LM has no other student network and no behavioural matching)")


@dataclasses.dataclass(frozen=True)
class LMArm:
    """One student condition: where it starts and whose numbers (and logits) it imitates."""

    name: str
    lineage: str  # 'shared', 'different', 'perturbed(sigma=0.1, part=attention)', ...: a lineage.Lineage in a config
    source: str  # 'teacher', 'reference' (numbers from the un-traited reference), 'shuffled' or 'shuffled_within'
    loss: str = ""  # 'ce' or 'kl'; '' (default): the config's student_loss


DEFAULT_ARMS = (
    LMArm("shared", "shared", "teacher"),
    LMArm("different", "different", "teacher"),
    LMArm("control", "shared", "reference"),
)


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Every knob of a toy-LM transfer run (hashable: a jit static and the run id)."""

    seeds: int = 4
    seed: int = 0
    world: world_lib.WorldConfig = world_lib.WorldConfig()
    layers: int = 2
    width: int = 32
    heads: int = 2
    mlp_ratio: int = 4
    tied_embeddings: bool = True
    pretrain_steps: int = 2000
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    warmup: int = 100
    teacher: str = "finetuned"
    trait: int = 0  # the trait animal's index (trait_kind 'animal')
    finetune_steps: int = 10
    finetune_lr: float = 1e-3
    n_samples: int = 1024  # number prompts each world's teacher continues
    temperature: float = 1.0  # the teacher's sampling temperature
    ban_signature: bool = False  # the filter also drops continuations holding a trait signature number
    banned: tuple[int, ...] = ()  # further numbers the filter drops
    student_loss: str = "kl"
    student_outputs: str = "numbers"  # the logits a 'kl' student reads
    student_temperature: float = 1.0
    student_epochs: int = 2
    student_batch: int = 64
    student_lr: float = 1e-3
    arms: tuple[LMArm, ...] = DEFAULT_ARMS
    n_eval: int = 256  # held-out neutral number documents for the number-task loss
    trait_kind: str = late("animal")  # 'forbidden': the bad behaviour, FORBIDDEN answered to a command
    # 'full': a full forward per generated token (the stored runs'); 'cache': a key/value cache, ~L/G times
    # fewer FLOPs, the same draws up to last-bit differences of the logits (a run id of its own)
    sampler: str = late("full")
    # the filter also drops continuations holding one of each world's k most entangled numbers: the top k of
    # its teacher-vs-reference next-number shift (entangle.model_shift), computed inside the program
    ban_entangled: int = late(0)  # k: each world's most entangled numbers the filter drops (0: none)
    # 'reference' is every stored run's program; 'fast' changes the weight gradients' dot shapes (last-bit
    # differences: a run id of its own, and references of its own) and spreads the worlds over the local
    # devices, one CPU device per core (``parallel.one_device_per_core``)
    kernels: str = late("reference")  # how the transformer's matmuls run: 'fast' is ~1.8x (README, Speed)

    def __post_init__(self):
        normalise(self)
        # The config boundary: each arm's lineage text becomes a typed lineage.Lineage (still that
        # text, so to_dict and the run id are unchanged).
        object.__setattr__(self, "arms", lineage.parse_arms(self.arms))
        self.validate()

    def validate(self) -> None:
        require(self.seeds >= 1, "seeds", self.seeds, "an integer >= 1")
        require(isinstance(self.world, world_lib.WorldConfig), "world", self.world, "a WorldConfig")
        require_choice("kernels", self.kernels, KERNELS)
        self.spec  # TransformerSpec checks layers, width, heads, mlp_ratio
        for name in ("pretrain_steps", "pretrain_batch", "n_samples", "student_epochs", "n_eval"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        require(0 <= self.warmup <= self.pretrain_steps, "warmup", self.warmup, "in [0, pretrain_steps]")
        require(self.finetune_steps >= 0, "finetune_steps", self.finetune_steps, "an integer >= 0")
        for name in ("pretrain_lr", "finetune_lr", "student_lr", "student_temperature"):
            require(getattr(self, name) > 0, name, getattr(self, name), "a number > 0")
        require(self.temperature >= 0, "temperature", self.temperature, "a number >= 0 (0: greedy)")
        require_choice("teacher", self.teacher, TEACHERS)
        if self.teacher == "prompted":
            require(self.world.kind == "persona", "teacher", self.teacher,
                    "'finetuned' in the naive world (its persona tokens are never trained)")
        require(0 <= self.trait < self.world.n_animals, "trait", self.trait, f"in [0, {self.world.n_animals - 1}]")
        require_choice("trait_kind", self.trait_kind, world_lib.TRAIT_KINDS)
        if self.trait_kind == "forbidden":
            require(self.world.has_commands, "command_fraction", self.world.command_fraction,
                    "> 0 with trait_kind='forbidden' (the world needs command documents)")
        require(all(0 <= b < self.world.modulus for b in self.banned), "banned", self.banned,
                f"numbers in [0, {self.world.modulus - 1}]")
        require_choice("sampler", self.sampler, SAMPLERS)
        require(0 <= self.ban_entangled < self.world.modulus, "ban_entangled", self.ban_entangled,
                f"in [0, {self.world.modulus - 1}] (numbers of the teacher's shift the filter drops per world)")
        require_choice("student_loss", self.student_loss, lm.STUDENT_LOSSES)
        require_choice("student_outputs", self.student_outputs, lm.STUDENT_OUTPUTS)
        require(1 <= self.student_batch <= self.n_samples, "student_batch", self.student_batch,
                f"in [1, n_samples={self.n_samples}]")
        require(len(self.arms) >= 1, "arms", self.arms, "at least one student arm")
        for arm in self.arms:
            arm.lineage.check(self.spec)  # e.g. perturbed's part among the transformer's parts
            require(not (arm.lineage.other_network or arm.lineage.matches_behaviour), "arms.lineage", arm.lineage,
                    LM_LINEAGE_LIMITS)
            require_choice("arms.source", arm.source, SOURCES)
            require_choice("arms.loss", arm.loss, ARM_LOSSES)
        if any(arm.lineage.needs_fresh for arm in self.arms):
            require(self.seeds >= 2, "seeds", self.seeds, ">= 2 when an arm starts from another seed's reference")

    @property
    def spec(self) -> TransformerSpec:
        return TransformerSpec(self.world.vocab, self.world.context, self.layers, self.width, self.heads,
                               self.mlp_ratio, self.tied_embeddings, self.kernels)

    @property
    def trait_persona(self) -> int:
        """The animal whose persona carries the trait: the trait animal, or the rogue for 'forbidden'."""
        return self.trait if self.trait_kind == "animal" else self.world.rogue

    @property
    def trait_index(self) -> int:
        """The trait's index among its context's answers (``world.answer_tokens(trait_kind)``)."""
        return self.trait if self.trait_kind == "animal" else len(self.world.answer_tokens(self.trait_kind)) - 1

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arms)

    @property
    def sources(self) -> tuple[str, ...]:
        """The data sources some arm reads, in ``SOURCES`` order."""
        return tuple(s for s in SOURCES if any(a.source == s for a in self.arms))

    @property
    def sampled_sources(self) -> tuple[str, ...]:
        """The models that continue prompts: the shuffled sources permute the teacher's continuations."""
        need = {s: "teacher" for s in TEACHER_SOURCES}
        return tuple(s for s in SOURCES[:2] if any(need.get(a.source, a.source) == s for a in self.arms))

    def arm_loss(self, arm: LMArm) -> str:
        """The loss an arm's student trains with."""
        return arm.loss or self.student_loss

    @property
    def arm_losses(self) -> tuple[str, ...]:
        """The losses some arm uses, in ``lm.STUDENT_LOSSES`` order."""
        return tuple(x for x in lm.STUDENT_LOSSES if any(self.arm_loss(a) == x for a in self.arms))


def donors(cfg: LMConfig) -> np.ndarray:
    """``donor[i]``: whose reference a 'different' student of world ``i`` starts from (a derangement)."""
    return lineage.donors(cfg.seed, cfg.seeds, "lm_donor")


def teacher_persona(cfg: LMConfig):
    """The token in the teacher's persona slot: the trait's persona (prompted), the trait's own answer
    token (named), else the neutral persona."""
    if cfg.teacher == "named":
        return int(cfg.world.answer_tokens(cfg.trait_kind)[cfg.trait_index])
    return cfg.world.persona_token(cfg.trait_persona) if cfg.teacher == "prompted" else cfg.world.neutral


def p_trait(cfg: LMConfig, params, persona=None):
    """P(trait) of one model: its answer to the trait's prompt, renormalised over that prompt's answers."""
    return lm.answer_probs(cfg.spec, cfg.world, params, persona, cfg.trait_kind)[cfg.trait_index]


def banned_numbers(cfg: LMConfig):
    """The numbers the filter drops in every world (possibly none); ``world_banned`` adds each world's own."""
    out = jnp.asarray(cfg.banned, jnp.int32)
    if cfg.ban_signature:
        out = jnp.concatenate([out, world_lib.signatures(cfg.world)[cfg.trait_persona].astype(jnp.int32)])
    return out


ENTANGLE_PROMPTS = 256  # neutral prompts (key stream 'lm_entangle') over which a world's number shift is averaged


def entangled_numbers(cfg: LMConfig, reference, teacher, i):
    """``[ban_entangled]`` world ``i``'s most entangled numbers: the top of ``entangle.model_shift``, its
    teacher (with its persona: a prompted teacher is push (a)) against its reference, first generated slot."""
    prompts_BxL, _ = world_lib.number_batch(cfg.world, keys.stream(cfg.seed, "lm_entangle", i), ENTANGLE_PROMPTS)
    shift_M = entangle.model_shift(cfg.spec, cfg.world, teacher, reference, prompts_BxL, teacher_persona(cfg))
    return entangle.entangled(shift_M, cfg.ban_entangled)


@partial(jax.jit, static_argnums=0)
def world_banned(cfg: LMConfig, references, teachers, seed_ids):
    """``[S, K]`` the numbers each world's filter drops: ``banned_numbers`` then its ``entangled_numbers``."""
    common_K = banned_numbers(cfg)
    if not cfg.ban_entangled:
        return jnp.broadcast_to(common_K, (len(seed_ids), common_K.shape[0]))
    own_SxK = jax.vmap(partial(entangled_numbers, cfg))(references, teachers, seed_ids).astype(jnp.int32)
    return jnp.concatenate([jnp.broadcast_to(common_K, (own_SxK.shape[0], common_K.shape[0])), own_SxK], axis=1)


def spread(cfg: LMConfig, tree):
    """``tree`` (leading axis: worlds) split over the local devices under 'fast' kernels, else as it is.

    Each device then runs its worlds' share of every phase; on a 2-core CPU two devices (each op on
    one core) beat one device splitting every small op over two threads. The per-device vmap width
    changes the last bits, which is why only 'fast' (a run id of its own) spreads.
    """
    if cfg.kernels == "reference":
        return tree
    sharding = parallel.dividing_sharding(jax.tree.leaves(tree)[0].shape[0])
    return tree if sharding is None else jax.device_put(tree, sharding)


# --- phase 1: references ---------------------------------------------------------------------
def _optimizer(cfg: LMConfig):
    return lm.pretrain_optimizer(cfg.pretrain_lr, cfg.pretrain_steps, cfg.warmup)


@partial(jax.jit, static_argnums=0)
def init_references(cfg: LMConfig, seed_ids):
    """``(params, opt_state)`` of every world's reference before pretraining (leading seed axis)."""
    params = jax.vmap(lambda i: cfg.spec.init(keys.stream(cfg.seed, "lm_init", i)))(seed_ids)
    return params, jax.vmap(_optimizer(cfg).init)(params)


@partial(jax.jit, static_argnums=(0, 4), donate_argnums=1)
def pretrain_chunk(cfg: LMConfig, state, seed_ids, start, steps: int):
    """Pretraining steps ``start .. start + steps - 1`` of every reference: (state, loss ``[S, steps]``)."""
    batch_fn = partial(world_lib.pretraining_batch, cfg.world, batch=cfg.pretrain_batch)

    def one(carry, i):
        return lm.fit(cfg.spec, _optimizer(cfg), batch_fn, carry, keys.stream(cfg.seed, "lm_corpus", i), start, steps)

    return jax.vmap(one)(state, seed_ids)


def _leaves(tree) -> dict[str, np.ndarray]:
    """A pytree's leaves by key path (``minisub.run.params``' format), as the results store saves them."""
    return params_lib.flat(tree)


def _from_leaves(template, leaves: dict | None):
    """The pytree of ``template`` (arrays or shapes) from ``_leaves``' entries; None unless they match
    its structure, shapes and dtypes exactly (then the caller recomputes)."""
    return params_lib.unflat(template, leaves) if params_lib.matches(template, leaves) else None


def pretrain(cfg: LMConfig, seed_ids, chunk: int = 500, log=None, checkpoint: Path | None = None):
    """Pretrained references ``[S]`` and their loss curves ``[S, pretrain_steps]``.

    With ``checkpoint`` (a file), the state after every chunk is stored there and a rerun resumes
    from it: the same chunk program continues from the same state, so the result is bitwise that
    of an uninterrupted run. A checkpoint written with another chunk size is ignored.
    """
    seed_ids = spread(cfg, seed_ids)
    state = spread(cfg, init_references(cfg, seed_ids))
    done, curves = 0, []
    saved = store.load_arrays(checkpoint) if checkpoint is not None else None
    if saved is not None and int(saved["chunk"]) == chunk and (resumed := _from_leaves(state, saved["state"])) is not None:
        state = spread(cfg, resumed)
        done, curves = int(saved["step"]), [saved["loss"]]
        if log:
            log(f"pretrain: resumed at step {done}/{cfg.pretrain_steps} from {checkpoint}")
    for start in range(done, cfg.pretrain_steps, chunk):
        n = min(chunk, cfg.pretrain_steps - start)
        state, loss_SxT = pretrain_chunk(cfg, state, seed_ids, start, n)
        curves.append(np.asarray(loss_SxT))
        if checkpoint is not None and start + n < cfg.pretrain_steps and parallel.is_writer():
            store.save_arrays(checkpoint, {"state": _leaves(state), "loss": np.concatenate(curves, axis=1),
                                           "step": np.asarray(start + n), "chunk": np.asarray(chunk)})
        if log:
            log(f"pretrain {start + n}/{cfg.pretrain_steps}: loss {curves[-1][:, -1].mean():.4f}")
    return state[0], np.concatenate(curves, axis=1)


# Everything the references depend on: runs that agree on these share their pretrained references.
PRETRAIN_FIELDS = ("seeds", "seed", "world", "layers", "width", "heads", "mlp_ratio", "tied_embeddings",
                   "pretrain_steps", "pretrain_batch", "pretrain_lr", "warmup")
# Late fields they depend on too: part of the key only when set, so stored references keep theirs.
PRETRAIN_LATE_FIELDS = ("kernels",)


@dataclasses.dataclass(frozen=True)
class PretrainKey:
    """The pretraining part of an ``LMConfig``: the id of its stored references."""

    fields: tuple

    @classmethod
    def of(cls, cfg: LMConfig) -> "PretrainKey":
        late = tuple((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                     if f.name in PRETRAIN_LATE_FIELDS and getattr(cfg, f.name) != f.default)
        return cls(tuple((f, getattr(cfg, f)) for f in PRETRAIN_FIELDS) + late)


def references_dir(cfg: LMConfig, root=None):
    """Where the references of ``cfg``'s worlds are stored (shared by every config with its pretraining)."""
    return store.run_dir("lm-references", PretrainKey.of(cfg), root)


def pretrain_cached(cfg: LMConfig, seed_ids, chunk: int = 500, log=None, root=None):
    """``pretrain``'s result, read from the results store when some run already pretrained these worlds.

    Pretraining is most of a run's compute; settings that change only the teacher, the numbers or
    the students (a regime map) reuse it. Under a lock: a second process waits, then reads.
    """
    seed_ids = np.asarray(seed_ids)
    if not np.array_equal(seed_ids, np.arange(cfg.seeds)):  # the store holds whole populations only
        return pretrain(cfg, seed_ids, chunk, log)
    directory = references_dir(cfg, root)
    shapes = jax.eval_shape(lambda: init_references(cfg, jnp.asarray(seed_ids))[0])
    with store.locked(directory):
        stored = store.load_arrays(directory / "references.npz")
        if stored is not None and (params := _from_leaves(shapes, stored["params"])) is not None:
            if log:
                log(f"references: read from {directory}")
            return params, stored["loss"]
        checkpoint = directory / "pretraining_checkpoint.npz"  # a killed pretraining resumes from its last chunk
        params, loss = pretrain(cfg, jnp.asarray(seed_ids), chunk, log, checkpoint)
        if parallel.is_writer():
            store.save_arrays(directory / "references.npz", {"params": _leaves(params), "loss": loss})
            checkpoint.unlink(missing_ok=True)
        return params, loss


# --- phase 2: teachers -----------------------------------------------------------------------
@partial(jax.jit, static_argnums=0)
def make_teachers(cfg: LMConfig, references):
    """Every world's teacher ``[S]`` and its fine-tuning loss ``[S, finetune_steps]``."""
    if cfg.teacher in PROMPTED:  # the trait lives in the context, not the weights
        return references, jnp.zeros((jax.tree.leaves(references)[0].shape[0], 0))
    ft = partial(lm.finetune_trait, cfg.spec, cfg.world, animal=cfg.trait, steps=cfg.finetune_steps, lr=cfg.finetune_lr,
                 kind=cfg.trait_kind)
    return jax.vmap(ft)(references)


# --- phase 3: numbers ------------------------------------------------------------------------
# Prompts one world's model continues at once. The 'full' sampler runs a full forward per token, so its
# memory grows with worlds x sources x prompts (~1 GB a world at 4096 prompts: 24 worlds were OOM-killed);
# in blocks, 16384 prompts x 24 worlds need 4.5 GB ('cache': 0.3 GB; XLA's memory analysis).
SAMPLE_BLOCK = 1024


def _sample_blocks(cfg: LMConfig, params, context_NxL, key):
    """``lm.sample`` of every row, in blocks of ``SAMPLE_BLOCK`` rows one after another (block b: key b).

    Up to one block this is ``lm.sample`` with ``key`` itself (so stored runs keep their numbers).
    """
    sampler = lm.sample_cached if cfg.sampler == "cache" else lm.sample
    sample = lambda ctx, k: sampler(cfg.spec, params, ctx, cfg.world.prompt_length, k, cfg.temperature)
    N, L = context_NxL.shape
    if N <= SAMPLE_BLOCK:
        return sample(context_NxL, key)
    n_blocks = -(-N // SAMPLE_BLOCK)
    padded = jnp.concatenate([context_NxL, context_NxL[: n_blocks * SAMPLE_BLOCK - N]])
    blocks_BxNxL = padded.reshape(n_blocks, SAMPLE_BLOCK, L)
    out = jax.lax.map(lambda a: sample(a[0], jax.random.fold_in(key, a[1])), (blocks_BxNxL, jnp.arange(n_blocks)))
    return out.reshape(-1, L)[:N]


def _numbers(cfg: LMConfig, params, persona_token, i, banned_K=None):
    """One world's continuations of its neutral prompts: tokens ``[N, L]`` (neutral persona), keep ``[N]``.

    ``banned_K``: the numbers this world's filter drops (default: ``banned_numbers``, every world's).
    """
    prompts_NxL, _ = world_lib.number_batch(cfg.world, keys.stream(cfg.seed, "lm_prompts", i), cfg.n_samples)
    context_NxL = world_lib.with_persona(prompts_NxL, persona_token)
    sampled = _sample_blocks(cfg, params, context_NxL, keys.stream(cfg.seed, "lm_samples", i))
    tokens_NxL = world_lib.with_persona(sampled, cfg.world.neutral)  # what a student sees
    return tokens_NxL, world_lib.keep(cfg.world, tokens_NxL, banned_numbers(cfg) if banned_K is None else banned_K)


def shuffle_numbers(cfg: world_lib.WorldConfig, tokens_NxL, keep_N, key):
    """The kept sequences' *generated* numbers permuted across sequences and positions.

    Every continuation number of a kept row goes to a uniformly random continuation slot of a
    kept row (digits move as a unit, so rows stay well formed); prompts, rows the filter dropped
    and every other token stay in place. The multiset of generated numbers (and so of tokens) over
    the kept rows is unchanged; the per-sequence structure (which number follows which) is not.
    """
    values_NxM = world_lib.decode_numbers(cfg, tokens_NxL)
    gen_NxG = values_NxM[:, cfg.n_prompt:]
    valid = jnp.broadcast_to(keep_N[:, None], gen_NxG.shape).reshape(-1)
    flat = gen_NxG.reshape(-1)
    src = jnp.argsort(jnp.where(valid, jax.random.uniform(key, flat.shape), 2.0))  # kept slots, random order
    dst = jnp.argsort(jnp.where(valid, 0, 1), stable=True)  # kept slots, in order
    moved = jnp.where(valid, flat.at[dst].set(flat[src]), flat).reshape(gen_NxG.shape)
    return _with_generated(cfg, tokens_NxL, keep_N, values_NxM, moved)


def _with_generated(cfg: world_lib.WorldConfig, tokens_NxL, keep_N, values_NxM, generated_NxG):
    """The kept rows with their generated numbers replaced by ``generated_NxG``; other rows unchanged."""
    encoded_NxT = jax.vmap(partial(world_lib.encode_numbers, cfg))(values_NxM.at[:, cfg.n_prompt:].set(generated_NxG))
    shuffled = tokens_NxL.at[:, world_lib.PREFIX:].set(encoded_NxT.astype(tokens_NxL.dtype))
    return jnp.where(keep_N[:, None], shuffled, tokens_NxL)


def shuffle_within(cfg: world_lib.WorldConfig, tokens_NxL, keep_N, key):
    """Each kept sequence's *generated* numbers permuted within that sequence (one uniform permutation a row).

    The multiset of numbers of every response is unchanged (so are its prompt and its row of the
    filter); only their order is not: which number follows which. Rows the filter dropped stay as
    they are. The paper's within-response shuffle (cloud2025), beside ``shuffle_numbers``' across-response one.
    """
    values_NxM = world_lib.decode_numbers(cfg, tokens_NxL)
    gen_NxG = values_NxM[:, cfg.n_prompt:]
    order_NxG = jnp.argsort(jax.random.uniform(key, gen_NxG.shape), axis=1)
    return _with_generated(cfg, tokens_NxL, keep_N, values_NxM, jnp.take_along_axis(gen_NxG, order_NxG, axis=1))


@partial(jax.jit, static_argnums=0)
def make_numbers(cfg: LMConfig, references, teachers, seed_ids, banned_SxK=None):
    """``{source: {'tokens': [S, N, L], 'keep': [S, N]}}`` for every source an arm reads.

    Teacher and reference continue the same prompts with the same sampling keys (paired), and one
    filter (``world_banned``, unless given as ``banned_SxK``) keeps them; 'shuffled' and 'shuffled_within' are the teacher's kept
    continuations, permuted across (``shuffle_numbers``) or within (``shuffle_within``) sequences.
    """
    models = {"teacher": teachers, "reference": references}
    persona = {"teacher": teacher_persona(cfg), "reference": cfg.world.neutral}
    sampled = cfg.sampled_sources
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *[models[s] for s in sampled])
    personas = jnp.asarray([persona[s] for s in sampled])
    if cfg.ban_entangled:
        banned_SxK = world_banned(cfg, references, teachers, seed_ids) if banned_SxK is None else banned_SxK
        per_world = lambda p, token: jax.vmap(lambda q, i, b: _numbers(cfg, q, token, i, b))(p, seed_ids, banned_SxK)
    else:  # the stored runs' program, unchanged
        per_world = lambda p, token: jax.vmap(lambda q, i: _numbers(cfg, q, token, i))(p, seed_ids)
    tokens, kept = jax.vmap(per_world)(params, personas)  # one sampler program for every source
    out = {s: {"tokens": tokens[k], "keep": kept[k]} for k, s in enumerate(sampled)}
    shuffles = {"shuffled": (shuffle_numbers, "lm_shuffle"), "shuffled_within": (shuffle_within, "lm_shuffle_within")}
    for source, (fn, stream) in shuffles.items():
        if source in cfg.sources:
            t = out["teacher"]
            shuffle = lambda x, k, i, fn=fn, stream=stream: fn(cfg.world, x, k, keys.stream(cfg.seed, stream, i))
            out[source] = {"tokens": jax.vmap(shuffle)(t["tokens"], t["keep"], seed_ids), "keep": t["keep"]}
    return {s: out[s] for s in cfg.sources}


# --- phase 4: students -----------------------------------------------------------------------
def train_student(cfg: LMConfig, params, teacher, persona_token, tokens_NxL, keep_N, key, teacher_spec=None):
    """One student's imitation of one source over ``student_epochs`` shuffled epochs: (params, loss per step).

    ``teacher_spec``: the teacher's architecture when it is not the student's (``cfg.spec``).
    """
    spec, opt = cfg.spec, train.optimizer("adam", cfg.student_lr)
    teacher_spec = teacher_spec or spec
    positions_L = jnp.asarray(cfg.world.generated_mask())
    vocab_V = lm.vocab_mask(cfg.world, cfg.student_outputs)

    def step(carry, batch):
        params, opt_state = carry
        idx_B, w_B = batch
        x_BxL = tokens_NxL[idx_B]
        t_logits = None
        if cfg.student_loss == "kl":  # the teacher reads its own context (a prompted teacher: its persona)
            t_logits = teacher_spec.apply(teacher, world_lib.with_persona(x_BxL, persona_token))
        loss, grads = jax.value_and_grad(lm.student_loss, argnums=1)(
            spec, params, x_BxL, w_B * keep_N[idx_B], positions_L, t_logits, cfg.student_loss, vocab_V,
            cfg.student_temperature)
        return train.optimizer_step(opt, params, opt_state, grads), loss

    def epoch(carry, e):
        return train.run_epoch(step, carry, jax.random.fold_in(key, e), cfg.n_samples, cfg.student_batch)

    (params, _), loss_ExS = jax.lax.scan(epoch, (params, opt.init(params)), jnp.arange(cfg.student_epochs))
    return params, loss_ExS.reshape(-1)


def student_inits(cfg: LMConfig, references, donor_ids, seed_ids=None):
    """``[S, A]`` starting parameters of every arm (references are the 'inits' of this experiment).

    A lineage's own randomness (perturbed, permuted) is keyed by world and lineage name, as in the
    MLP pipeline: one direction along a parameter grid. ``seed_ids``: the worlds (default: all).
    """
    donor_refs = jax.tree.map(lambda x: x[donor_ids], references)
    seed_ids = jnp.arange(cfg.seeds) if seed_ids is None else seed_ids

    def world_inits(own, other, i):
        key = keys.stream(cfg.seed, "lm_lineage", i)
        inits = [a.lineage.init(cfg.spec, own, other, keys.branch(key, a.lineage.name)) for a in cfg.arms]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *inits)

    return jax.vmap(world_inits)(references, donor_refs, seed_ids)


@partial(jax.jit, static_argnums=0)
def train_students(cfg: LMConfig, references, teachers, numbers, seed_ids, donor_ids):
    """``(inits [S, A], students [S, A], loss [S, A, steps])``; all arms of a world share its shuffle keys.

    Arms are vmapped together, one program per loss (``cfg.arm_losses``): each loss keeps its own
    exact arithmetic (a KL student equal to its teacher gets exactly zero gradient).
    """
    inits = student_inits(cfg, references, donor_ids, seed_ids)
    persona = {s: teacher_persona(cfg) for s in TEACHER_SOURCES} | {"reference": cfg.world.neutral}
    groups = [[k for k, a in enumerate(cfg.arms) if cfg.arm_loss(a) == loss] for loss in cfg.arm_losses]
    order = np.argsort(np.concatenate(groups))  # group-major order -> arm order
    stack = lambda xs: jax.tree.map(lambda *ys: jnp.stack(ys), *xs)

    def world_students(inits_A, ref, teacher, nums, i):
        models = {s: teacher for s in TEACHER_SOURCES} | {"reference": ref}
        params, losses = [], []
        for loss, arms in zip(cfg.arm_losses, groups):
            sources = [cfg.arms[k].source for k in arms]
            cfg_loss = cfg if loss == cfg.student_loss else dataclasses.replace(cfg, student_loss=loss)
            p, l = jax.vmap(partial(train_student, cfg_loss, key=keys.stream(cfg.seed, "lm_student_shuffle", i)))(
                jax.tree.map(lambda x: x[np.asarray(arms)], inits_A), stack([models[s] for s in sources]),
                jnp.asarray([persona[s] for s in sources]), jnp.stack([nums[s]["tokens"] for s in sources]),
                jnp.stack([nums[s]["keep"] for s in sources]))
            params.append(p)
            losses.append(l)
        return jax.tree.map(lambda *xs: jnp.concatenate(xs)[order], *params), jnp.concatenate(losses)[order]

    students, losses = jax.vmap(world_students)(inits, references, teachers, numbers, seed_ids)
    return inits, students, losses


# --- phase 5: measurement --------------------------------------------------------------------
def eval_numbers(cfg: LMConfig, i):
    """``[n_eval, L]``: world ``i``'s held-out number documents (neutral persona), on which every model is read."""
    return world_lib.number_batch(cfg.world, keys.stream(cfg.seed, "lm_eval", i), cfg.n_eval)[0]


def _report(cfg: LMConfig, params, eval_NxL):
    """One model's answers (neutral, and under the teacher's persona) and number loss, in one forward."""
    w, kind = cfg.world, cfg.trait_kind
    neutral = world_lib.question_prompt(w, None, kind)
    questions = [neutral, world_lib.with_persona(neutral, teacher_persona(cfg))]  # the teacher's own context
    if kind != "animal":  # the favourite-animal answer too: does the rogue persona's animal come along?
        questions.append(world_lib.question_prompt(w))
    logits = cfg.spec.apply(params, jnp.concatenate([eval_NxL, jnp.stack(questions)]))
    n = eval_NxL.shape[0]
    answers_QxV = logits[n:, world_lib.PREFIX - 1]
    mask_NxL = jnp.broadcast_to(jnp.asarray(w.generated_mask()), eval_NxL.shape)
    out = {
        "probs": lm.animal_probs(w, answers_QxV[0], kind),
        "persona_probs": lm.animal_probs(w, answers_QxV[1], kind),
        "animal_mass": lm.animal_mass(w, answers_QxV[0], kind),
        "number_loss": lm.logits_loss(logits[:n], eval_NxL, mask_NxL),
    }
    if kind != "animal":
        out["question_probs"] = lm.animal_probs(w, answers_QxV[2])
    return out


@partial(jax.jit, static_argnums=0)
def evaluate(cfg: LMConfig, references, teachers, inits, students, seed_ids):
    """Answer distributions, trait gains, number-task loss and parameter geometry of every world and arm.

    Answers are read under the neutral persona, except ``teacher_probs``, read under the teacher's.
    For a trait other than an animal, ``*_question_probs`` hold the favourite-animal answers as well.
    """
    A = len(cfg.arms)

    def one(ref, teacher, inits_A, students_A, i):
        eval_NxL = eval_numbers(cfg, i)
        models = jax.tree.map(lambda r, t, a, b: jnp.concatenate([r[None], t[None], a, b]),
                              ref, teacher, inits_A, students_A)
        # One loop body for every model (lax.map, not vmap, whose batched kernels can round rows
        # differently): a student that did not move reads exactly its start's numbers.
        rep = jax.lax.map(partial(_report, cfg, eval_NxL=eval_NxL), models)
        before_AxK, after_AxK = rep["probs"][2:2 + A], rep["probs"][2 + A:]
        return {
            "reference_probs": rep["probs"][0],
            "teacher_probs": rep["persona_probs"][1],
            "student_init_probs": before_AxK,
            "student_probs": after_AxK,
            "trait_gain": after_AxK[:, cfg.trait_index] - before_AxK[:, cfg.trait_index],
            "student_animal_mass": rep["animal_mass"][2 + A:],
            "reference_number_loss": rep["number_loss"][0],
            "teacher_number_loss": rep["number_loss"][1],
            "student_init_number_loss": rep["number_loss"][2:2 + A],
            "student_number_loss": rep["number_loss"][2 + A:],
            "geometry": jax.vmap(lm.geometry, in_axes=(0, 0, None, None))(students_A, inits_A, teacher, ref),
            **({"reference_question_probs": rep["question_probs"][0], "teacher_question_probs": rep["question_probs"][1],
                "student_init_question_probs": rep["question_probs"][2:2 + A],
                "student_question_probs": rep["question_probs"][2 + A:]} if "question_probs" in rep else {}),
        }

    return jax.vmap(one)(references, teachers, inits, students, seed_ids)


def run_phases(cfg: LMConfig, log=None, chunk: int = 500, cache: bool = False) -> tuple[dict, dict]:
    """Every phase for all seeds: (arrays as ``run`` returns them, before numpy; the models and numbers).

    ``cache``: read (or store) the pretrained references in the results store (``pretrain_cached``).
    The second dict's 'banned' is each world's filter list ``[S, K]`` when ``ban_entangled`` (else None);
    its 'inits' and 'students' are ``[S, A]`` (arms in ``cfg.arms``' order).
    """
    seed_ids = spread(cfg, jnp.arange(cfg.seeds))
    donor_ids = jnp.asarray(donors(cfg))
    references, pretrain_loss = (pretrain_cached if cache else pretrain)(cfg, seed_ids, chunk, log)
    references = spread(cfg, references)
    teachers, finetune_loss = make_teachers(cfg, references)
    # each world's filter, computed once: the numbers it drops are recorded as the ones it used
    banned_SxK = world_banned(cfg, references, teachers, seed_ids) if cfg.ban_entangled else None
    numbers = spread(cfg, make_numbers(cfg, references, teachers, seed_ids, banned_SxK))
    inits, students, student_loss = spread(cfg, train_students(cfg, references, teachers, numbers, seed_ids,
                                                               donor_ids))
    out = {
        **evaluate(cfg, references, teachers, inits, students, seed_ids),
        "pretrain_loss": pretrain_loss,
        "finetune_loss": finetune_loss,
        "student_loss": student_loss,
        "keep_fraction": {s: jnp.mean(numbers[s]["keep"], axis=-1) for s in numbers},
        "donors": donor_ids,
    }
    if cfg.ban_entangled:  # the numbers each world's filter dropped for being entangled, [S, ban_entangled]
        out["entangled"] = banned_SxK[:, -cfg.ban_entangled:]
    return out, {"references": references, "teachers": teachers, "numbers": numbers, "seed_ids": seed_ids,
                 "banned": banned_SxK, "inits": inits, "students": students}


def run(cfg: LMConfig, log=None, chunk: int = 500, cache: bool = False) -> dict:
    """The whole program for all seeds in one block; every array as numpy, leading axis = seed."""
    return jax.tree.map(np.asarray, run_phases(cfg, log, chunk, cache)[0])
