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

from minisub import keys, lineage, train, tree
from minisub.mlp import data
from minisub.mlp import distill
from minisub.mlp import measure
from minisub.mlp import mnist
from minisub.mlp import models
from minisub.config import ConfigError, late, normalise, require, require_choice, split_top

MNIST_TRAIN, MNIST_TEST, MNIST_PIXELS = 60_000, 10_000, 784


@dataclasses.dataclass(frozen=True)
class Arm:
    """One student condition: its initialisation lineage and the logits its imitation loss reads."""

    name: str
    lineage: str  # 'shared', 'interpolated(alpha=0.5)', ...: a lineage.Lineage once in a config (still its text)
    outputs: str  # 'aux', 'class' or 'all'
    lr: float | None = None  # the arm's own student learning rate (None: the config's student_lr)
    liminal: float = 0.0  # weight of KL(student's init || student) on all logits: "liminal" training
    committee: int = 1  # imitate the pooled outputs of this many teachers (the first is the world's own)

    # The command-line form (``--arms``): ``name=lineage:outputs``, then optional ``:lr=X``,
    # ``:liminal=X``, ``:committee=N``; commas inside the lineage's parentheses belong to it.
    FORMAT = "NAME=LINEAGE:OUTPUTS[:lr=X][:liminal=X][:committee=N]"
    _OPTIONS = {"lr": float, "liminal": float, "committee": int}

    @classmethod
    def parse(cls, text: str) -> "Arm":
        """``'probe=perturbed(sigma=0.3,part=hidden):aux:lr=1e-3'`` -> an Arm (its lineage is checked by the config)."""
        bad = lambda why: ConfigError(  # noqa: E731
            f"arms={text!r} is not allowed: arms must be {cls.FORMAT}, comma-separated ({why}), e.g. "
            "student_aux=shared:aux,probe=perturbed(sigma=0.3,part=hidden):aux")
        name, eq, rest = text.partition("=")
        parts = [p.strip() for p in split_top(rest, ":")]
        if not eq or not name.strip() or len(parts) < 2 or not parts[0]:
            raise bad("a name, '=', a lineage and ':' outputs")
        options = {}
        for item in parts[2:]:
            key, _, value = item.partition("=")
            if key not in cls._OPTIONS:
                raise bad(f"unknown option {key!r}: options are {', '.join(cls._OPTIONS)}")
            try:
                options[key] = cls._OPTIONS[key](value)
            except ValueError:
                raise bad(f"{key} must be a {cls._OPTIONS[key].__name__}") from None
        return cls(name.strip(), parts[0], parts[1], **options)

    def __str__(self) -> str:
        """The ``parse`` form: ``Arm.parse(str(arm)) == arm``."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        extra = "".join(f":{k}={getattr(self, k)!r}" for k in self._OPTIONS if getattr(self, k) != defaults[k])
        return f"{self.name}={self.lineage}:{self.outputs}{extra}"


PROJECTIONS = ("none", "trait")
STUDENT_INPUTS = (*data.NOISE_KINDS, "mnist")  # 'mnist': the real training images, unlabelled

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
    # A student network other than the teacher's (the 'other_architecture' lineage); empty: the same.
    student_hidden: tuple[int, ...] = ()
    student_activation: str = ""
    # Epochs of the 'behaviourally_matched' lineage's pre-phase (all logits of the reference, real images).
    match_epochs: int = 5
    # Another data order for the world's own teacher, from the same init (0: the recipe's order, that of
    # every stored run). Two orders give two teachers of one base: the audit's positives and negatives.
    # Committee members keep their own orders.
    teacher_order: int = late(0)

    def __post_init__(self):
        normalise(self)
        # The config boundary: each arm's lineage text is parsed once into a typed lineage.Lineage,
        # which is still that text (so to_dict, and the run id, are unchanged).
        object.__setattr__(self, "arms", lineage.parse_arms(self.arms))
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
        require_choice("noise", self.noise, STUDENT_INPUTS)
        if self.noise == "mnist":
            require(self.n_noise <= self.n_train, "n_noise", self.n_noise,
                    f"<= n_train={self.n_train} when the student's inputs are real images (noise='mnist')")
        require_choice("loss", self.loss, tuple(distill.IMITATION_LOSSES))
        require(self.temperature > 0, "temperature", self.temperature, "a number > 0")
        require(self.trace_every >= 0, "trace_every", self.trace_every, "an integer >= 0 (0: no trace)")
        require(self.trait_batch >= 1, "trait_batch", self.trait_batch, "an integer >= 1 (drawn with replacement)")
        if self.trace_every:
            require(1 <= self.n_probe <= self.n_test, "n_probe", self.n_probe, f"in [1, n_test={self.n_test}]")
        require_choice("projection", self.projection, PROJECTIONS)
        require(len(self.arms) >= 1, "arms", self.arms, "at least one student arm")
        require(len(set(self.arm_names)) == len(self.arms), "arms", self.arm_names, "arms with distinct names")
        for arm in self.arms:
            arm.lineage.check(self.student_spec)  # the model's parts, e.g. perturbed(part=...)
            require_choice("arms.outputs", arm.outputs, ("aux", "class", "all"))
            require(arm.lr is None or arm.lr > 0, "arms.lr", arm.lr, "a number > 0 or None (the config's student_lr)")
            require(arm.liminal >= 0, "arms.liminal", arm.liminal, "a number >= 0")
            require(arm.committee >= 1, "arms.committee", arm.committee, "an integer >= 1")
        if self.student_hidden:
            require(min(self.student_hidden) >= 1, "student_hidden", self.student_hidden, "widths >= 1, or empty")
        if self.student_activation:
            require_choice("student_activation", self.student_activation, tuple(models.ACTIVATIONS))
        other = [a.lineage.other_network for a in self.arms]
        others = ", ".join(repr(n) for n, d in lineage.LINEAGES.items() if d.other_network)  # e.g. 'other_architecture'
        if self.student_spec != self.spec:
            require(self.trace_every == 0, "trace_every", self.trace_every,
                    "0 when the student's network differs from the teacher's (no parameter geometry)")
            require(all(other), "arms.lineage", [a.lineage for a in self.arms],
                    f"a lineage of another network ({others}) for every arm when student_hidden/student_activation "
                    "differ from the teacher's")
        else:
            require(not any(other), "student_hidden", self.student_hidden,
                    f"a network other than the teacher's (or student_activation another activation) for {others}")
        for a in self.arms:
            problem = a.lineage.student_problem(self.spec, self.student_spec)
            require(problem is None, "student_hidden", self.student_hidden, problem)
        require(self.match_epochs >= 1, "match_epochs", self.match_epochs, "an integer >= 1")
        require(self.teacher_order >= 0, "teacher_order", self.teacher_order, "an integer >= 0 (0: the recipe's order)")
        if any(a.lineage.needs_fresh for a in self.arms):
            require(self.seeds >= 2, "seeds", self.seeds, ">= 2 when an arm starts from another seed's init")

    @property
    def spec(self) -> models.MLPSpec:
        return models.MLPSpec(MNIST_PIXELS, self.hidden, 10, self.n_aux, self.activation, self.init)

    @property
    def student_spec(self) -> models.MLPSpec:
        return dataclasses.replace(self.spec, hidden=self.student_hidden or self.hidden,
                                   activation=self.student_activation or self.activation)

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arms)

    @property
    def n_teachers(self) -> int:
        """Teachers per world: 1, or the largest committee an arm pools."""
        return max(a.committee for a in self.arms)

    @property
    def matched_arms(self) -> tuple[int, ...]:
        """Indices of the arms with a behavioural-matching pre-phase."""
        return tuple(k for k, a in enumerate(self.arms) if a.lineage.matches_behaviour)

    @property
    def liminal(self) -> bool:
        """Whether any arm carries the KL-to-init regulariser."""
        return any(a.liminal > 0 for a in self.arms)

    @property
    def arm_lrs(self) -> bool:
        """Whether any arm has a learning rate of its own."""
        return any(a.lr is not None and a.lr != self.student_lr for a in self.arms)

    @property
    def match_phase_epochs(self) -> int:
        return self.match_epochs if self.matched_arms else 0


def donors(cfg: AuxConfig) -> np.ndarray:
    """``donor[i]``: whose init a student of world ``i`` takes when its lineage needs another one."""
    return lineage.donors(cfg.seed, cfg.seeds, "donor")


def _committee_key(cfg: AuxConfig, name: str, i, k):
    """Committee member ``k`` (>= 1) of world ``i``: its own init and shuffle streams."""
    return keys.member(keys.stream(cfg.seed, name, i), k)


def _init_world(cfg: AuxConfig, i, donor):
    spec, student_spec = cfg.spec, cfg.student_spec
    teacher_init = spec.init(keys.stream(cfg.seed, "init", i))
    fresh = student_spec.init(keys.stream(cfg.seed, "init", donor))  # the donor world's init: independent of i's
    inits = []
    for a in cfg.arms:
        # keyed by world and lineage name: one perturbation direction along a whole parameter grid
        key = keys.branch(keys.stream(cfg.seed, "lineage", i), a.lineage.name)
        inits.append(a.lineage.init(student_spec, teacher_init, fresh, key))
    students = jax.tree.map(lambda *xs: jnp.stack(xs), *inits)
    t_opt = train.optimizer(cfg.teacher_optimizer, cfg.teacher_lr)
    s_opt = train.optimizer(cfg.student_optimizer, cfg.student_lr)
    world = {
        "teacher_init": teacher_init,
        "teacher": teacher_init,
        "teacher_opt": t_opt.init(teacher_init),
        "student_init": students,
        "students": students,
        "student_opt": jax.vmap(s_opt.init)(students),
    }
    if cfg.n_teachers > 1:  # teachers 1..K-1 of the committee, from inits of their own
        ks = jnp.arange(1, cfg.n_teachers)
        committee = jax.vmap(lambda k: spec.init(_committee_key(cfg, "committee_init", i, k)))(ks)
        world |= {"committee": committee, "committee_opt": jax.vmap(t_opt.init)(committee)}
    if cfg.matched_arms:
        matched = jax.tree.map(lambda x: x[np.asarray(cfg.matched_arms)], students)
        world["match_opt"] = jax.vmap(s_opt.init)(matched)
    return world


@partial(jax.jit, static_argnums=0)
def init_population(cfg: AuxConfig, seed_ids, donor_ids):
    """The initial state of worlds ``seed_ids`` (a pytree with a leading seed axis)."""
    return jax.vmap(partial(_init_world, cfg))(seed_ids, donor_ids)


def _classifier_epoch(cfg: AuxConfig, params, opt_state, key, images_u8, labels):
    """One epoch of a teacher learning the class logits of the labelled images."""
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

    return train.run_epoch(step, (params, opt_state), key, cfg.n_train, cfg.teacher_batch)


def teacher_shuffle(cfg: AuxConfig, i, order=None):
    """World ``i``'s teacher's shuffle stream; a non-zero teacher order is folded in (order 0: unchanged).

    ``order`` (traced) overrides ``cfg.teacher_order``: the runner passes it so that one compiled
    program serves every order of a recipe.
    """
    stream = keys.stream(cfg.seed, "teacher_shuffle", i)
    if order is None:
        return keys.member(stream, cfg.teacher_order) if cfg.teacher_order else stream
    return jax.lax.cond(order > 0, lambda s: keys.member(s, order), lambda s: s, stream)


def _teacher_epoch(cfg: AuxConfig, world, i, epoch, images_u8, labels, order=None):
    key = jax.random.fold_in(teacher_shuffle(cfg, i, order), epoch)
    (params, opt_state), loss_S = _classifier_epoch(cfg, world["teacher"], world["teacher_opt"], key, images_u8, labels)
    world = {**world, "teacher": params, "teacher_opt": opt_state}
    if cfg.n_teachers > 1:
        def member(params, opt_state, k):
            key = jax.random.fold_in(_committee_key(cfg, "committee_shuffle", i, k), epoch)
            return _classifier_epoch(cfg, params, opt_state, key, images_u8, labels)[0]

        ks = jnp.arange(1, cfg.n_teachers)
        committee, committee_opt = jax.vmap(member)(world["committee"], world["committee_opt"], ks)
        world |= {"committee": committee, "committee_opt": committee_opt}
    return world, loss_S


@partial(jax.jit, static_argnums=0, donate_argnums=1)
def teacher_epoch(cfg: AuxConfig, state, seed_ids, epoch, images_u8, labels, order=None):
    """One epoch of teacher training (and of every committee member) on MNIST class logits.

    ``order``: the teacher's data order, traced (None: ``cfg.teacher_order``); see ``teacher_shuffle``.
    """
    fn = partial(_teacher_epoch, cfg, epoch=epoch, images_u8=images_u8, labels=labels, order=order)
    return jax.vmap(lambda w, i: fn(w, i))(state, seed_ids)


def _match_epoch(cfg: AuxConfig, world, i, epoch, images_u8):
    """The matched arms imitate the reference (the teacher's init) on all logits of real images."""
    spec, opt = cfg.student_spec, train.optimizer(cfg.student_optimizer, cfg.student_lr)
    rows = np.asarray(cfg.matched_arms)
    every = models.output_mask(spec, "all")
    reference = world["teacher_init"]

    def step(carry, batch):
        students, opt_states = carry
        idx_B, w_B = batch
        x_BxI = mnist.to_unit_range(images_u8[idx_B])
        r_BxO = cfg.spec.apply(reference, x_BxI)

        def loss_fn(p):
            return distill.weighted_mean(distill.kl(r_BxO, spec.apply(p, x_BxI), every), w_B)

        loss_M, grads = jax.vmap(jax.value_and_grad(loss_fn))(students)
        updates, opt_states = jax.vmap(opt.update)(grads, opt_states, students)
        return (jax.vmap(optax.apply_updates)(students, updates), opt_states), loss_M

    matched = jax.tree.map(lambda x: x[rows], world["students"])
    key = jax.random.fold_in(keys.stream(cfg.seed, "match_shuffle", i), epoch)
    (matched, match_opt), loss_SxM = train.run_epoch(step, (matched, world["match_opt"]), key, cfg.n_train,
                                                     cfg.teacher_batch)
    put = lambda full: jax.tree.map(lambda f, m: f.at[rows].set(m), full, matched)
    # The noise phase starts where matching ends: that is the student's init for every measurement.
    return {**world, "students": put(world["students"]), "student_init": put(world["student_init"]),
            "match_opt": match_opt}, loss_SxM


@partial(jax.jit, static_argnums=0, donate_argnums=1)
def match_epoch(cfg: AuxConfig, state, seed_ids, epoch, images_u8):
    """One epoch of the behaviourally-matched arms' pre-phase; returns (state, loss [seed, step, arm])."""
    fn = partial(_match_epoch, cfg, epoch=epoch, images_u8=images_u8)
    return jax.vmap(lambda w, i: fn(w, i))(state, seed_ids)


def arm_masks(cfg: AuxConfig):
    """``[arms, outputs]`` boolean masks of the logits each arm's imitation loss reads."""
    return jnp.stack([models.output_mask(cfg.spec, a.outputs) for a in cfg.arms])


def project_out_trait(update, trait_grad):
    """Remove from ``update`` its component along −∇L_T when it has one (``update``·∇L_T < 0).

    After this the update no longer lowers the trait loss to first order; an update that
    already raises it is left alone.
    """
    along = tree.dot(update, trait_grad)
    scale = jnp.where(along < 0, along / jnp.maximum(tree.dot(trait_grad, trait_grad), 1e-30), 0.0)
    return jax.tree.map(lambda u, g: u - scale * g, update, trait_grad)


def student_inputs(cfg: AuxConfig, key, idx_B, images_u8):
    """The student phase's inputs ``idx_B``: key-derived noise, or real training images."""
    if cfg.noise == "mnist":
        return mnist.to_unit_range(images_u8[idx_B])
    return data.noise_batch(key, idx_B, cfg.spec.n_in, cfg.noise)


def pooled_targets(cfg: AuxConfig, outputs_KxBxO, masks_AxO):
    """Per arm, the pooled outputs of its committee (the first ``arm.committee`` teachers): [A, B, O].

    KL-type losses imitate the mixture of the members' distributions over the arm's logits (as
    logits: its log); MSE imitates the mean logit.
    """
    k = outputs_KxBxO.shape[0]
    weights_AxK = jnp.asarray([[1.0 / a.committee if j < a.committee else 0.0 for j in range(k)] for a in cfg.arms])
    if cfg.loss == "mse":
        return jnp.einsum("ak,kbo->abo", weights_AxK, outputs_KxBxO)

    def mixture(w_K, mask_O):
        log_p = jax.vmap(lambda z: distill.masked_log_softmax(z, mask_O, cfg.temperature))(outputs_KxBxO)
        log_mix = jax.scipy.special.logsumexp(log_p, axis=0, b=w_K[:, None, None])
        return cfg.temperature * log_mix  # divided by T again inside the loss

    return jax.vmap(mixture)(weights_AxK, masks_AxO)


TRACE_KEYS = ("grad_cos", "update_trait_cos", "dist_teacher", "travel", "update_cos", "function_kl", "probe_accuracy")


def _trait_grads(cfg: AuxConfig, trait_key, images_u8, labels, students, t):
    """∇L_T at every student: cross-entropy of its class logits on a real labelled batch."""
    spec = cfg.student_spec
    idx = jax.random.randint(jax.random.fold_in(trait_key, t), (cfg.trait_batch,), 0, cfg.n_train)
    x, y = mnist.to_unit_range(images_u8[idx]), labels[idx]
    loss = lambda p: jnp.mean(distill.cross_entropy(models.class_logits(spec, spec.apply(p, x)), y))
    return jax.vmap(jax.grad(loss))(students)


def _trace(cfg: AuxConfig, world, probe, students, grads, updates, g_trait):
    """Trajectory measurements per arm at the current step (before its update)."""
    spec, (probe_x, probe_y, teacher_probe) = cfg.student_spec, probe
    geo = jax.vmap(measure.geometry, in_axes=(0, 0, None, None))(
        students, world["student_init"], world["teacher"], world["teacher_init"])
    log_q = jax.vmap(lambda p: jax.nn.log_softmax(models.class_logits(spec, spec.apply(p, probe_x))))(students)
    return {
        "grad_cos": jax.vmap(tree.cos)(grads, g_trait),  # cos(∇L_distill, ∇L_T) > 0: distilling also lowers L_T
        "update_trait_cos": jax.vmap(tree.cos)(updates, jax.tree.map(jnp.negative, g_trait)),
        "dist_teacher": geo["dist_teacher"]["total"],
        "travel": geo["travel"]["total"],
        "update_cos": geo["update_cos"]["total"],
        "function_kl": jnp.mean(jnp.sum(jnp.exp(teacher_probe) * (teacher_probe - log_q), -1), -1),
        "probe_accuracy": jnp.mean(jnp.argmax(log_q, -1) == probe_y, -1),
    }


def _student_epoch(cfg: AuxConfig, world, i, epoch, images_u8, labels, probe_u8, probe_labels):
    spec, opt = cfg.student_spec, train.optimizer(cfg.student_optimizer, cfg.student_lr)
    teacher_spec = cfg.spec
    lr_scale_A = jnp.asarray([(a.lr or cfg.student_lr) / cfg.student_lr for a in cfg.arms])
    liminal_A = jnp.asarray([a.liminal for a in cfg.arms])
    every = models.output_mask(spec, "all")
    imitation = distill.IMITATION_LOSSES[cfg.loss]
    masks_AxO = arm_masks(cfg)
    noise_key, trait_key = keys.stream(cfg.seed, "noise", i), keys.stream(cfg.seed, "trait_batch", i)
    teacher = world["teacher"]
    steps = train.steps_per_epoch(cfg.n_noise, cfg.student_batch)
    probe_x = mnist.to_unit_range(probe_u8[: cfg.n_probe])
    probe = (probe_x, probe_labels[: cfg.n_probe],
             jax.nn.log_softmax(models.class_logits(spec, teacher_spec.apply(teacher, probe_x))))
    trait_grads = partial(_trait_grads, cfg, trait_key, images_u8, labels)
    trace = partial(_trace, cfg, world, probe)

    n_arms = len(cfg.arms)

    def step(carry, batch):
        students, opt_states, t = carry
        idx_B, w_B = batch
        # One input batch and one forward per teacher, shared by every student arm.
        x_BxI = student_inputs(cfg, noise_key, idx_B, images_u8)
        t_BxO = teacher_spec.apply(teacher, x_BxI)
        if cfg.n_teachers > 1:
            c_KxBxO = jax.vmap(teacher_spec.apply, in_axes=(0, None))(world["committee"], x_BxI)
            targets, t_axis = pooled_targets(cfg, jnp.concatenate([t_BxO[None], c_KxBxO]), masks_AxO), 0
        else:
            targets, t_axis = t_BxO, None

        def loss_fn(p, p0, mask_O, target_BxO, liminal):
            out_BxO = spec.apply(p, x_BxI)
            per_B = imitation(target_BxO, out_BxO, mask_O, cfg.temperature)
            total = distill.weighted_mean(per_B, w_B)
            if cfg.liminal:  # KL(student's init || student) on all logits, weighted per arm
                anchor_B = distill.kl(spec.apply(p0, x_BxI), out_BxO, every)
                total = total + liminal * distill.weighted_mean(anchor_B, w_B)
            return total, distill.weighted_mean(per_B, w_B)

        grad_fn = jax.vmap(jax.value_and_grad(loss_fn, has_aux=True), in_axes=(0, 0, 0, t_axis, 0))
        (_, loss_A), grads = grad_fn(students, world["student_init"], masks_AxO, targets, liminal_A)
        updates, new_opt = jax.vmap(opt.update)(grads, opt_states, students)
        if cfg.arm_lrs:  # an arm's own learning rate: its updates rescaled (exact for Adam and SGD)
            updates = jax.vmap(lambda u, c: jax.tree.map(lambda x: c * x, u))(updates, lr_scale_A)
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

            skipped = lambda _: {k: jnp.full((n_arms,), jnp.nan) for k in TRACE_KEYS}
            out["trace"] = jax.lax.cond(logged, measured, skipped, None)
        students = jax.vmap(optax.apply_updates)(students, updates)
        return (students, new_opt, t + 1), out

    key = jax.random.fold_in(keys.stream(cfg.seed, "student_shuffle", i), epoch)
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


def _accuracy(spec, params, images_u8, labels):
    logits = lambda x: models.class_logits(spec, spec.apply(params, mnist.to_unit_range(x)))
    return measure.accuracy(logits, images_u8, labels)


def _evaluate_students(cfg: AuxConfig, world, images_u8, labels):
    spec, student_spec = cfg.spec, cfg.student_spec
    return {
        "students": jax.vmap(lambda p: _accuracy(student_spec, p, images_u8, labels))(world["students"]),
        # distances between networks of different shapes are undefined: no geometry then
        "geometry": {} if student_spec != spec else jax.vmap(measure.geometry, in_axes=(0, 0, None, None))(
            world["students"], world["student_init"], world["teacher"], world["teacher_init"]),
    }


def _evaluate_teachers(cfg: AuxConfig, world, images_u8, labels):
    spec = cfg.spec
    out = {
        "reference": _accuracy(spec, world["teacher_init"], images_u8, labels),
        "teacher": _accuracy(spec, world["teacher"], images_u8, labels),
    }
    if cfg.n_teachers > 1:
        out["committee"] = jax.vmap(lambda p: _accuracy(spec, p, images_u8, labels))(world["committee"])
    return out


@partial(jax.jit, static_argnums=0)
def evaluate(cfg: AuxConfig, state, images_u8, labels):
    """Test accuracy of reference, teacher and students, and the students' parameter geometry."""
    return evaluate_teachers(cfg, state, images_u8, labels) | evaluate_students(cfg, state, images_u8, labels)


@partial(jax.jit, static_argnums=0)
def evaluate_students(cfg: AuxConfig, state, images_u8, labels):
    """The students' test accuracy and parameter geometry: what changes from one student epoch to the next."""
    return jax.vmap(lambda w: _evaluate_students(cfg, w, images_u8, labels))(state)


@partial(jax.jit, static_argnums=0)
def evaluate_teachers(cfg: AuxConfig, state, images_u8, labels):
    """Test accuracy of the reference (the teacher's init), the teacher and any committee.

    They are fixed once the teacher phase ends, so the driver evaluates them once, not every student epoch.
    """
    return jax.vmap(lambda w: _evaluate_teachers(cfg, w, images_u8, labels))(state)


def flops_per_epoch(cfg: AuxConfig) -> dict[str, float]:
    """Matmul FLOPs one world executes per epoch of each phase (the student's with its evaluation).

    ``teachers_evaluation`` is the once-per-run test pass of the reference, teacher and committee.
    Backward = 2x forward; padded batch rows are counted, since they are computed.
    """
    f, g = cfg.spec.flops_per_example(), cfg.student_spec.flops_per_example()
    n_arms, k = len(cfg.arms), cfg.n_teachers
    teacher_examples = cfg.teacher_batch * train.steps_per_epoch(cfg.n_train, cfg.teacher_batch)
    teacher = 3 * f * k * teacher_examples
    per_example = k * f + (3 + cfg.liminal) * n_arms * g
    students = per_example * cfg.student_batch * train.steps_per_epoch(cfg.n_noise, cfg.student_batch)
    evaluation = n_arms * g * cfg.n_test
    match = (f + 3 * g * len(cfg.matched_arms)) * teacher_examples
    return {"match": float(match), "teacher": float(teacher), "student": float(students + evaluation),
            "teachers_evaluation": float((1 + k) * f * cfg.n_test)}


def flops_per_seed(cfg: AuxConfig) -> float:
    per = flops_per_epoch(cfg)
    return (per["match"] * cfg.match_phase_epochs + per["teacher"] * cfg.teacher_epochs
            + per["student"] * cfg.student_epochs + per["teachers_evaluation"])
