"""Theorem 1 (cloud2025) in numbers: one teacher step, one student step.

Notation. θ⁰ is the teacher's init and L_T its loss; Δθ_T = −∇L_T(θ⁰); the teacher takes ``steps``
plain-GD steps of size ε (one step: θ_T = θ⁰ + εΔθ_T). The student starts at θ_S⁰ (θ⁰ when the
init is shared) and imitates the teacher on inputs x_S from any distribution:
Δθ_S = −∇_θ E_x L_S(f_θ(x), f_{θ_T}(x)) at θ_S⁰.

First-order picture. Δθ_S = Δθ_S⁽⁰⁾ + kε·E[J_Sᵀ H J_T] Δθ_T + O(ε²), where Δθ_S⁽⁰⁾ is the step
toward the *untrained* teacher (zero when shared), J_S and J_T are the output Jacobians at θ_S⁰
and θ⁰, and H is the Hessian of L_S in the student's logits: (diag(q) − qqᵀ)/τ² on the masked
logits for soft-target KL at temperature τ, (2/k_mask)·I on them for ``distill.mse``. When the
init is shared, M = E[JᵀHJ] is positive semi-definite and
Δθ_S·Δθ_T = kε·Δθ_TᵀMΔθ_T + O(ε²) ≥ 0.

Matrix-free throughout: J·v by ``jax.jvp``, Jᵀ·u by ``jax.vjp``; J is never formed. Parameters
are ``nnx.State`` pytrees and every function is pure; ``population`` computes every quantity for
many worlds (seed × input distribution × student init) and every ε in one jitted call.

Quantities of ``one_step``, per ε (shape [E]):
  inner                Δθ_S·Δθ_T;  cos: cos(Δθ_S, Δθ_T);  student_norm: ‖Δθ_S‖
  predicted            kε·Δθ_TᵀMΔθ_T, M at θ_S⁰: Theorem 1's first-order term
  rel_error            |inner − predicted| / |predicted|
  taylor               offset + kε·slope: the first-order expansion for any init
  taylor_rel_error     |inner − taylor| / |kε·slope|: the error of its O(ε) part
  direction_rel_error  ‖Δθ_S − Δθ_S⁽⁰⁾ − kε·E[J_SᵀHJ_T]Δθ_T‖ / ‖kε·E[J_SᵀHJ_T]Δθ_T‖ (vector by vjp)
  delta_loss_T         L_T(θ_S⁰ + αΔθ_S) − L_T(θ_S⁰);  delta_loss_T_linear: α∇L_T(θ_S⁰)·Δθ_S
  sign_flips           hidden pre-activations on x_S (examples × units) whose sign differs at θ_T and θ⁰
and per world: quad Δθ_TᵀMΔθ_T (M at θ_S⁰), slope Δθ_TᵀE[J_SᵀHJ_T]Δθ_T (= quad when shared),
offset Δθ_S⁽⁰⁾·Δθ_T (0 when shared), teacher_norm ‖Δθ_T‖.

Exact kinks break the expansion: a ReLU pre-activation that is exactly 0 at θ⁰ (a zero input, or
a layer whose units are all dead, with zero biases) moves by one-sided derivatives under the
teacher's step that JAX's relu′(0) = 0 leaves out of J; and once the teacher's step flips the sign
of a hidden pre-activation (``sign_flips`` > 0), a ReLU network's expansion picks up a kink term.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from minisub import tree
from minisub.mlp import distill
from minisub.mlp import models
from minisub.config import require, require_choice

LOSSES = ("kl", "soft_ce", "mse")
OUTPUTS = ("aux", "class", "all")


def _ratio(num, den):
    """num / |den|, NaN where den is exactly 0."""
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, jnp.abs(den), 1.0), jnp.nan)


def _safe_rel(value, reference):
    """|value − reference| / |reference|, NaN where the reference is exactly 0."""
    return _ratio(jnp.abs(value - reference), reference)


@dataclasses.dataclass(frozen=True)
class Imitation:
    """The student's imitation loss: ``loss`` in LOSSES on the logits ``outputs``, at ``temperature``."""

    loss: str = "kl"
    outputs: str = "aux"
    temperature: float = 1.0

    def __post_init__(self):
        require_choice("imitation.loss", self.loss, LOSSES)
        require_choice("imitation.outputs", self.outputs, OUTPUTS)
        require(self.temperature > 0, "imitation.temperature", self.temperature, "a number > 0")

    @property
    def name(self) -> str:
        return f"{self.loss}-{self.outputs}"

    @classmethod
    def parse(cls, text: str, temperature: float = 1.0) -> Imitation:
        """``'kl-aux'`` -> Imitation('kl', 'aux', temperature)."""
        loss, _, outputs = text.partition("-")
        return cls(loss, outputs, temperature)

    def mask(self, spec: models.MLPSpec):
        return models.output_mask(spec, self.outputs)


# ---------------------------------------------------------------------------------------------
# The teacher


def class_cross_entropy(spec: models.MLPSpec, params, batch):
    """The default L_T: mean hard-label cross-entropy of the class logits on ``batch = (x_NxI, labels_N)``."""
    x_NxI, labels_N = batch
    return jnp.mean(distill.cross_entropy(models.class_logits(spec, spec.apply(params, x_NxI)), labels_N))


def classification_loss(spec: models.MLPSpec, x_NxI, labels_N) -> Callable:
    """L_T as a callable params -> scalar: class-logit cross-entropy on a labelled batch."""
    return lambda params: class_cross_entropy(spec, params, (x_NxI, labels_N))


def teacher_direction(loss_T: Callable, params):
    """Δθ_T = −∇L_T(params)."""
    return jax.tree.map(jnp.negative, jax.grad(loss_T)(params))


def teacher_after(loss_T: Callable, params0, eps, steps: int = 1, direction=None):
    """θ_T after ``steps`` plain-GD steps of size ``eps`` on L_T (θ⁰ + εΔθ_T for one step)."""
    direction = teacher_direction(loss_T, params0) if direction is None else direction
    params = tree.axpy(eps, direction, params0)
    if steps == 1:
        return params
    step = lambda p, _: (tree.axpy(-eps, jax.grad(loss_T)(p), p), None)
    return jax.lax.scan(step, params, None, length=steps - 1)[0]


# ---------------------------------------------------------------------------------------------
# The student


def imitation_loss(spec: models.MLPSpec, imitation: Imitation, student, teacher_BxO, x_BxI):
    """E_x L_S(f_student(x), teacher logits) over the batch."""
    per_B = distill.IMITATION_LOSSES[imitation.loss](
        teacher_BxO, spec.apply(student, x_BxI), imitation.mask(spec), imitation.temperature
    )
    return jnp.mean(per_B)


def student_direction(spec: models.MLPSpec, imitation: Imitation, student0, teacher, x_BxI):
    """Δθ_S = −∇_θ E_x L_S(f_θ(x), f_teacher(x)) at θ = student0."""
    teacher_BxO = jax.lax.stop_gradient(spec.apply(teacher, x_BxI))
    grads = jax.grad(imitation_loss, argnums=2)(spec, imitation, student0, teacher_BxO, x_BxI)
    return jax.tree.map(jnp.negative, grads)


# ---------------------------------------------------------------------------------------------
# The first-order picture, matrix-free


def logit_hvp(spec: models.MLPSpec, imitation: Imitation, logits_BxO, u_BxO):
    """H·u per example: the Hessian of L_S in the student's logits, at ``logits``, restricted to the mask."""
    mask_O = imitation.mask(spec)
    u_BxO = jnp.where(mask_O, u_BxO, 0.0)
    if imitation.loss == "mse":
        return u_BxO * (2.0 / jnp.sum(mask_O).astype(u_BxO.dtype))
    tau = imitation.temperature
    q_BxO = jax.nn.softmax(jnp.where(mask_O, logits_BxO / tau, -jnp.inf), axis=-1)
    return (q_BxO * u_BxO - q_BxO * jnp.sum(q_BxO * u_BxO, axis=-1, keepdims=True)) / tau**2


def hidden_preactivations(spec: models.MLPSpec, params, x_BxI) -> list:
    """[z_BxH per hidden layer]: the inputs of each hidden activation (the MLP's forward pass, unrolled)."""
    pure = nnx.to_pure_dict(params)
    act, zs = models.ACTIVATIONS[spec.activation], []
    for key in sorted(pure["hidden"], key=int):
        layer = pure["hidden"][key]
        zs.append(x_BxI @ layer["kernel"] + layer["bias"])
        x_BxI = act(zs[-1])
    return zs


def sign_flips(spec: models.MLPSpec, before, after, x_BxI):
    """How many hidden pre-activations (examples × units) have a different sign (−, 0, +) under ``after``."""
    pairs = zip(hidden_preactivations(spec, before, x_BxI), hidden_preactivations(spec, after, x_BxI))
    return sum(jnp.sum(jnp.sign(a) != jnp.sign(b)) for a, b in pairs)


def output_jvp(spec: models.MLPSpec, params, x_BxI, v):
    """(f_params(x), J·v) per example, by one forward-mode pass."""
    return jax.jvp(lambda p: spec.apply(p, x_BxI), (params,), (v,))


def gauss_newton_quad(spec: models.MLPSpec, imitation: Imitation, params, x_BxI, v):
    """vᵀMv with M = E_x[JᵀHJ] at ``params`` (one jvp, no vjp)."""
    logits_BxO, jv_BxO = output_jvp(spec, params, x_BxI, v)
    return jnp.mean(jnp.sum(jv_BxO * logit_hvp(spec, imitation, logits_BxO, jv_BxO), axis=-1))


def gauss_newton_vp(spec: models.MLPSpec, imitation: Imitation, params, x_BxI, v):
    """M·v with M = E_x[JᵀHJ] at ``params``: a jvp, H per example, then a vjp."""
    logits_BxO, jv_BxO = output_jvp(spec, params, x_BxI, v)
    _, pullback = jax.vjp(lambda p: spec.apply(p, x_BxI), params)
    u_BxO = logit_hvp(spec, imitation, logits_BxO, jv_BxO) / x_BxI.shape[0]
    return pullback(u_BxO)[0]


# ---------------------------------------------------------------------------------------------
# One world, every ε


def one_step(spec: models.MLPSpec, imitation: Imitation, loss_T: Callable, params0, student0, x_BxI, eps_E,
             *, steps: int = 1, alpha=1.0) -> dict:
    """Theorem-1 quantities (see the module docstring) of one world, for every teacher step size in ``eps_E``."""
    d_T = teacher_direction(loss_T, params0)
    f = lambda p: spec.apply(p, x_BxI)
    t0_BxO, jt_BxO = output_jvp(spec, params0, x_BxI, d_T)
    s0_BxO, js_BxO = output_jvp(spec, student0, x_BxI, d_T)
    _, pullback = jax.vjp(f, student0)
    h_t_BxO = logit_hvp(spec, imitation, t0_BxO, jt_BxO)  # H(at the teacher's initial outputs)·J_T Δθ_T
    quad = jnp.mean(jnp.sum(js_BxO * logit_hvp(spec, imitation, s0_BxO, js_BxO), axis=-1))
    slope = jnp.mean(jnp.sum(js_BxO * h_t_BxO, axis=-1))
    md_T = pullback(h_t_BxO / x_BxI.shape[0])[0]  # E[J_SᵀHJ_T]Δθ_T (= MΔθ_T when shared)
    d_S0 = student_direction(spec, imitation, student0, params0, x_BxI)
    offset = tree.dot(d_S0, d_T)
    loss_S0, g_S = jax.value_and_grad(loss_T)(student0)
    t_norm = tree.norm(d_T)

    def at(eps):
        teacher = teacher_after(loss_T, params0, eps, steps, d_T)
        d_S = student_direction(spec, imitation, student0, teacher, x_BxI)
        inner = tree.dot(d_S, d_T)
        s_norm = tree.norm(d_S)
        predicted = steps * eps * quad
        taylor = offset + steps * eps * slope
        d_pred = tree.axpy(steps * eps, md_T, d_S0)
        residual = tree.sub(d_S, d_pred)
        return {
            "inner": inner,
            "cos": inner / jnp.maximum(s_norm * t_norm, jnp.finfo(inner.dtype).tiny),
            "predicted": predicted,
            "rel_error": _safe_rel(inner, predicted),
            "taylor": taylor,
            "taylor_rel_error": _safe_rel(inner - offset, taylor - offset),
            "direction_rel_error": _ratio(tree.norm(residual), steps * eps * tree.norm(md_T)),
            "delta_loss_T": loss_T(tree.axpy(alpha, d_S, student0)) - loss_S0,
            "delta_loss_T_linear": alpha * tree.dot(g_S, d_S),
            "student_norm": s_norm,
            "sign_flips": sign_flips(spec, params0, teacher, x_BxI).astype(inner.dtype),
        }

    per_eps = jax.vmap(at)(eps_E)
    return {**per_eps, "quad": quad, "slope": slope, "offset": offset, "teacher_norm": t_norm}


def sweep(spec: models.MLPSpec, imitations: tuple[Imitation, ...], loss_T: Callable, params0, student0, x_BxI,
          eps_E, *, steps: int = 1, alpha=1.0) -> dict:
    """``one_step`` for each imitation: {imitation.name: quantities}."""
    return {m.name: one_step(spec, m, loss_T, params0, student0, x_BxI, eps_E, steps=steps, alpha=alpha)
            for m in imitations}


@partial(jax.jit, static_argnames=("spec", "imitations", "teacher_loss", "steps", "batch_size"))
def population(spec: models.MLPSpec, imitations: tuple[Imitation, ...], inits_N, teacher_data_N, inputs_XxBxI,
               teacher_W, student_W, input_W, eps_E, *, teacher_loss: Callable = class_cross_entropy,
               steps: int = 1, alpha=1.0, batch_size: int | None = None) -> dict:
    """Every world's ``sweep`` in one jitted call: {imitation: {quantity: [W, E] or [W]}}."""
    # World w: the teacher starts at inits_N[teacher_W[w]] with L_T = teacher_loss(spec, ·,
    # teacher_data_N[teacher_W[w]]); the student starts at inits_N[student_W[w]] (the same index: a
    # shared init) and imitates on inputs_XxBxI[input_W[w]]. Worlds are vmapped batch_size at a time
    # (lax.map), ε within each world; teacher_loss must be hashable (a module-level function).
    take = lambda t, i: jax.tree.map(lambda a: a[i], t)
    eps_E = jnp.asarray(eps_E, jax.tree.leaves(inits_N)[0].dtype)

    def world(idx):
        t, s, d = idx
        data = take(teacher_data_N, t)
        loss_T = lambda p: teacher_loss(spec, p, data)
        return sweep(spec, imitations, loss_T, take(inits_N, t), take(inits_N, s), inputs_XxBxI[d], eps_E,
                     steps=steps, alpha=alpha)

    return jax.lax.map(world, (teacher_W, student_W, input_W), batch_size=batch_size)
