"""The auxiliary-logit transfer program: teachers on a labelled task, students distilled on noise.

One population = ``seeds`` independent worlds. In world ``i`` a teacher starts at init ``i`` and
learns the class logits of MNIST; every student *arm* starts from an init given by its lineage
(``shared``: the teacher's init; ``different``: the init of world ``donor[i]``, a derangement)
and imitates the teacher on a fixed per-world noise set, reading only the logits its arm names.
Each phase is one jitted, seed-vmapped program per epoch (a ``lax.scan`` over steps); the
Python driver loops over epochs only, to show progress and to evaluate between epochs.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from minisub import data, distill, keys, lineage, measure, mnist, models, train
from minisub.config import normalise, require, require_choice

MNIST_TRAIN, MNIST_TEST, MNIST_PIXELS = 60_000, 10_000, 784


@dataclasses.dataclass(frozen=True)
class Arm:
    """One student condition: its initialisation lineage and the logits its imitation loss reads."""

    name: str
    lineage: str
    outputs: str  # 'aux', 'class' or 'all'


PROJECTIONS = ("none", "trait")

PAPER_ARMS = (
    Arm("student_aux", "shared", "aux"),
    Arm("student_all", "shared", "all"),
    Arm("cross_aux", "different", "aux"),
    Arm("cross_all", "different", "all"),
)


@dataclasses.dataclass(frozen=True)
class AuxConfig:
    """Every knob of an auxiliary-logit transfer run; the defaults are the published recipe."""

    seeds: int = 100
    seed: int = 0
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    init: str = "normal_fan_in"
    n_aux: int = 3
    n_train: int = MNIST_TRAIN
    n_test: int = MNIST_TEST
    teacher_epochs: int = 5
    teacher_lr: float = 3e-4
    teacher_batch: int = 1024
    teacher_optimizer: str = "adam"
    n_noise: int = MNIST_TRAIN
    noise: str = "uniform"
    student_epochs: int = 5
    student_lr: float = 3e-4
    student_batch: int = 1024
    student_optimizer: str = "adam"
    loss: str = "kl"
    temperature: float = 1.0
    arms: tuple[Arm, ...] = PAPER_ARMS
    # Beyond the paper: the trait gradient (teacher's task loss on real labelled images, at the
    # student) every `trace_every` student steps (0: never), and the projection variant.
    trace_every: int = 0
    trait_batch: int = 1024
    n_probe: int = 1000
    projection: str = "none"

    def __post_init__(self):
        normalise(self)
        self.validate()

    def validate(self) -> None:
        require(self.seeds >= 1, "seeds", self.seeds, "an integer >= 1")
        models.validate_mlp_fields(self)
        require(1 <= self.n_train <= MNIST_TRAIN, "n_train", self.n_train, f"in [1, {MNIST_TRAIN}]")
        require(1 <= self.n_test <= MNIST_TEST, "n_test", self.n_test, f"in [1, {MNIST_TEST}]")
        require(self.n_noise >= 1, "n_noise", self.n_noise, "an integer >= 1")
        for phase, n in (("teacher", self.n_train), ("student", self.n_noise)):
            epochs, lr, batch = (getattr(self, f"{phase}_{k}") for k in ("epochs", "lr", "batch"))
            require(epochs >= 1, f"{phase}_epochs", epochs, "an integer >= 1")
            require(lr > 0, f"{phase}_lr", lr, "a number > 0")
            require(1 <= batch <= n, f"{phase}_batch", batch, f"in [1, {n}] (the size of its data set)")
            require_choice(f"{phase}_optimizer", getattr(self, f"{phase}_optimizer"), train.OPTIMIZERS)
        require_choice("noise", self.noise, data.NOISE_KINDS)
        require_choice("loss", self.loss, tuple(distill.IMITATION_LOSSES))
        require(self.temperature > 0, "temperature", self.temperature, "a number > 0")
        require(self.trace_every >= 0, "trace_every", self.trace_every, "an integer >= 0 (0: no trace)")
        require(self.trait_batch >= 1, "trait_batch", self.trait_batch, "an integer >= 1 (drawn with replacement)")
        if self.trace_every:
            require(1 <= self.n_probe <= self.n_test, "n_probe", self.n_probe, f"in [1, n_test={self.n_test}]")
        require_choice("projection", self.projection, PROJECTIONS)
        require(len(self.arms) >= 1, "arms", self.arms, "at least one student arm")
        for arm in self.arms:
            require_choice("arms.lineage", arm.lineage, tuple(lineage.LINEAGES))
            require_choice("arms.outputs", arm.outputs, ("aux", "class", "all"))
        if any(arm.lineage != "shared" for arm in self.arms):
            require(self.seeds >= 2, "seeds", self.seeds, ">= 2 when an arm starts from another seed's init")

    @property
    def spec(self) -> models.MLPSpec:
        return models.MLPSpec(MNIST_PIXELS, self.hidden, 10, self.n_aux, self.activation, self.init)

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arms)


def donors(cfg: AuxConfig) -> np.ndarray:
    """``donor[i]``: whose init a student of world ``i`` takes when its lineage needs another one."""
    if cfg.seeds < 2:
        return np.zeros(cfg.seeds, np.int32)
    return lineage.derangement(keys.branch(keys.root(cfg.seed), "donor"), cfg.seeds).astype(np.int32)


def _stream(cfg: AuxConfig, name: str, i):
    return keys.member(keys.branch(keys.root(cfg.seed), name), i)


def _init_world(cfg: AuxConfig, i, donor):
    spec = cfg.spec
    teacher_init = spec.init(_stream(cfg, "init", i))
    other_init = spec.init(_stream(cfg, "init", donor))
    inits = [lineage.student_init(a.lineage, spec, teacher_init, other_init) for a in cfg.arms]
    students = jax.tree.map(lambda *xs: jnp.stack(xs), *inits)
    t_opt = train.optimizer(cfg.teacher_optimizer, cfg.teacher_lr)
    s_opt = train.optimizer(cfg.student_optimizer, cfg.student_lr)
    return {
        "teacher_init": teacher_init,
        "teacher": teacher_init,
        "teacher_opt": t_opt.init(teacher_init),
        "student_init": students,
        "students": students,
        "student_opt": jax.vmap(s_opt.init)(students),
    }


@partial(jax.jit, static_argnums=0)
def init_population(cfg: AuxConfig, seed_ids, donor_ids):
    """The initial state of worlds ``seed_ids`` (a pytree with a leading seed axis)."""
    return jax.vmap(partial(_init_world, cfg))(seed_ids, donor_ids)


def _teacher_epoch(cfg: AuxConfig, world, i, epoch, images_u8, labels):
    spec, opt = cfg.spec, train.optimizer(cfg.teacher_optimizer, cfg.teacher_lr)

    def step(carry, batch):
        params, opt_state = carry
        idx_B, w_B = batch
        x_BxI = mnist.to_unit_range(images_u8[idx_B])

        def loss_fn(p):
            logits = models.class_logits(spec, spec.apply(p, x_BxI))
            return distill.weighted_mean(distill.cross_entropy(logits, labels[idx_B]), w_B)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        return train.optimizer_step(opt, params, opt_state, grads), loss

    key = jax.random.fold_in(_stream(cfg, "teacher_shuffle", i), epoch)
    (params, opt_state), loss_S = train.run_epoch(
        step, (world["teacher"], world["teacher_opt"]), key, cfg.n_train, cfg.teacher_batch
    )
    return {**world, "teacher": params, "teacher_opt": opt_state}, loss_S


@partial(jax.jit, static_argnums=0, donate_argnums=1)
def teacher_epoch(cfg: AuxConfig, state, seed_ids, epoch, images_u8, labels):
    """One epoch of teacher training on MNIST class logits for every world."""
    fn = partial(_teacher_epoch, cfg, epoch=epoch, images_u8=images_u8, labels=labels)
    return jax.vmap(lambda w, i: fn(w, i))(state, seed_ids)


def arm_masks(cfg: AuxConfig):
    """``[arms, outputs]`` boolean masks of the logits each arm's imitation loss reads."""
    return jnp.stack([models.output_mask(cfg.spec, a.outputs) for a in cfg.arms])


def _dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def project_out_trait(update, trait_grad):
    """Remove from ``update`` its component along −∇L_T when it has one (``update``·∇L_T < 0).

    After this the update no longer lowers the trait loss to first order; an update that
    already raises it is left alone.
    """
    along = _dot(update, trait_grad)
    scale = jnp.where(along < 0, along / jnp.maximum(_dot(trait_grad, trait_grad), 1e-30), 0.0)
    return jax.tree.map(lambda u, g: u - scale * g, update, trait_grad)


def _cos(a, b):
    return _dot(a, b) / jnp.maximum(jnp.sqrt(_dot(a, a) * _dot(b, b)), 1e-30)


def _student_epoch(cfg: AuxConfig, world, i, epoch, images_u8, labels, probe_u8, probe_labels):
    spec, opt = cfg.spec, train.optimizer(cfg.student_optimizer, cfg.student_lr)
    imitation = distill.IMITATION_LOSSES[cfg.loss]
    masks_AxO = arm_masks(cfg)
    noise_key, trait_key = _stream(cfg, "noise", i), _stream(cfg, "trait_batch", i)
    teacher = world["teacher"]
    steps = train.steps_per_epoch(cfg.n_noise, cfg.student_batch)
    probe_x = mnist.to_unit_range(probe_u8[: cfg.n_probe])
    probe_y = probe_labels[: cfg.n_probe]
    teacher_probe = jax.nn.log_softmax(models.class_logits(spec, spec.apply(teacher, probe_x)))

    def trait_grads(students, t):
        """∇L_T at every student: cross-entropy of its class logits on a real labelled batch."""
        idx = jax.random.randint(jax.random.fold_in(trait_key, t), (cfg.trait_batch,), 0, cfg.n_train)
        x, y = mnist.to_unit_range(images_u8[idx]), labels[idx]
        loss = lambda p: jnp.mean(distill.cross_entropy(models.class_logits(spec, spec.apply(p, x)), y))
        return jax.vmap(jax.grad(loss))(students)

    def trace(students, grads, updates, g_trait):
        """Trajectory measurements per arm at the current step (before its update)."""
        geo = jax.vmap(measure.geometry, in_axes=(0, 0, None, None))(
            students, world["student_init"], teacher, world["teacher_init"])
        log_q = jax.vmap(lambda p: jax.nn.log_softmax(models.class_logits(spec, spec.apply(p, probe_x))))(students)
        return {
            "grad_cos": jax.vmap(_cos)(grads, g_trait),  # cos(∇L_distill, ∇L_T) > 0: distilling also lowers L_T
            "update_trait_cos": jax.vmap(_cos)(updates, jax.tree.map(jnp.negative, g_trait)),
            "dist_teacher": geo["dist_teacher"]["total"],
            "travel": geo["travel"]["total"],
            "update_cos": geo["update_cos"]["total"],
            "function_kl": jnp.mean(jnp.sum(jnp.exp(teacher_probe) * (teacher_probe - log_q), -1), -1),
            "probe_accuracy": jnp.mean(jnp.argmax(log_q, -1) == probe_y, -1),
        }

    trace_keys = ("grad_cos", "update_trait_cos", "dist_teacher", "travel", "update_cos", "function_kl", "probe_accuracy")
    n_arms = len(cfg.arms)

    def step(carry, batch):
        students, opt_states, t = carry
        idx_B, w_B = batch
        # One noise batch and one teacher forward, shared by every student arm.
        x_BxI = data.noise_batch(noise_key, idx_B, spec.n_in, cfg.noise)
        t_BxO = spec.apply(teacher, x_BxI)

        def loss_fn(p, mask_O):
            per_B = imitation(t_BxO, spec.apply(p, x_BxI), mask_O, cfg.temperature)
            return distill.weighted_mean(per_B, w_B)

        loss_A, grads = jax.vmap(jax.value_and_grad(loss_fn))(students, masks_AxO)
        updates, new_opt = jax.vmap(opt.update)(grads, opt_states, students)
        out = {"loss": loss_A}
        if cfg.projection == "trait":
            g_trait = trait_grads(students, t)
            updates = jax.vmap(project_out_trait)(updates, g_trait)
        if cfg.trace_every:
            logged = t % cfg.trace_every == 0  # the same for every world: a real branch, not a select
            g_for_trace = g_trait if cfg.projection == "trait" else None

            def measured(_):
                g = g_for_trace if g_for_trace is not None else trait_grads(students, t)
                return trace(students, grads, updates, g)

            skipped = lambda _: {k: jnp.full((n_arms,), jnp.nan) for k in trace_keys}
            out["trace"] = jax.lax.cond(logged, measured, skipped, None)
        students = jax.vmap(optax.apply_updates)(students, updates)
        return (students, new_opt, t + 1), out

    key = jax.random.fold_in(_stream(cfg, "student_shuffle", i), epoch)
    (students, opt_states, _), out = train.run_epoch(
        step, (world["students"], world["student_opt"], epoch * steps), key, cfg.n_noise, cfg.student_batch
    )
    return {**world, "students": students, "student_opt": opt_states}, out


@partial(jax.jit, static_argnums=0, donate_argnums=1)
def student_epoch(cfg: AuxConfig, state, seed_ids, epoch, images_u8, labels, probe_u8, probe_labels):
    """One epoch of distillation on the fixed noise set for every world and arm.

    Returns (state, {'loss': [seed, step, arm], 'trace': {name: [seed, step, arm]} when traced}).
    ``images_u8, labels`` (real, labelled) feed the trait gradient; ``probe_*`` the trace's probes.
    """
    fn = partial(_student_epoch, cfg, epoch=epoch, images_u8=images_u8, labels=labels, probe_u8=probe_u8,
                 probe_labels=probe_labels)
    return jax.vmap(lambda w, i: fn(w, i))(state, seed_ids)


def _evaluate_world(cfg: AuxConfig, world, images_u8, labels):
    spec = cfg.spec
    acc = lambda p: measure.accuracy(
        lambda x: models.class_logits(spec, spec.apply(p, mnist.to_unit_range(x))), images_u8, labels
    )
    geometry = jax.vmap(measure.geometry, in_axes=(0, 0, None, None))(
        world["students"], world["student_init"], world["teacher"], world["teacher_init"]
    )
    return {
        "reference": acc(world["teacher_init"]),
        "teacher": acc(world["teacher"]),
        "students": jax.vmap(acc)(world["students"]),
        "geometry": geometry,
    }


@partial(jax.jit, static_argnums=0)
def evaluate(cfg: AuxConfig, state, images_u8, labels):
    """Test accuracy of reference, teacher and students, and the students' parameter geometry."""
    return jax.vmap(lambda w: _evaluate_world(cfg, w, images_u8, labels))(state)


def flops_per_epoch(cfg: AuxConfig) -> dict[str, float]:
    """Matmul FLOPs one world executes per teacher epoch and per student epoch (with its evaluation).

    Backward = 2x forward; padded batch rows are counted, since they are computed.
    """
    f = cfg.spec.flops_per_example()
    n_arms = len(cfg.arms)
    teacher = 3 * f * cfg.teacher_batch * train.steps_per_epoch(cfg.n_train, cfg.teacher_batch)
    students = (1 + 3 * n_arms) * f * cfg.student_batch * train.steps_per_epoch(cfg.n_noise, cfg.student_batch)
    evaluation = (2 + n_arms) * f * cfg.n_test
    return {"teacher": float(teacher), "student": float(students + evaluation)}


def flops_per_seed(cfg: AuxConfig) -> float:
    per = flops_per_epoch(cfg)
    return per["teacher"] * cfg.teacher_epochs + per["student"] * cfg.student_epochs
