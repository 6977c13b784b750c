"""How a student's initialisation relates to its teacher's: the study's independent variable.

A lineage is written as a string, ``name`` or ``name(param=value, ...)``, e.g. ``shared``,
``interpolated(alpha=0.5)``, ``perturbed(sigma=0.1, part=hidden)``. ``parse`` turns it, once, at
a config's boundary, into a ``Lineage``: a frozen value holding its name, its validated
parameters (defaults filled in) and its definition's properties. A ``Lineage`` *is* its text (a
``str`` subclass): configs store, serialise and hash exactly the string written in a preset, so
run ids do not depend on this module's types.

Every lineage function has the signature ``fn(model, teacher_init, fresh, key, **params) ->
student_init`` where ``model`` is the student's spec (``MLPSpec``, ``TransformerSpec``, ...),
``fresh`` is an independent draw from the student's init distribution (in the pipelines: another
world's init, chosen by a derangement, so never the teacher's own) and ``key`` drives any
randomness of the lineage itself. The pipelines key it by world and lineage *name* only, so one
world's perturbation direction (or permutation) is the same at every point of a parameter grid:
common random numbers along a sweep.

A model takes part through three optional members (duck-typed, so this module imports no model):

* ``model.parts``: the names of its parts (MLP: hidden, head; transformer: embeddings,
  attention, mlp, unembedding) and ``model.part_of(path)``: the part of the leaf at a dotted
  path (``'hidden.0.kernel'``, ``'blocks.1.attn.qkv.kernel'``);
* ``model.permute(params, key)``: a random reparametrisation computing the same function.

A lineage declares as data what it needs (``Definition``): a fresh draw, another student
network, the behavioural pre-phase, model parts or methods. Pipelines ask the value
(``lin.needs_fresh``, ...), never a list of names, so ``register`` adds a lineage from outside
the package without editing any pipeline.
"""

from __future__ import annotations

import dataclasses
import re
import types
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from minisub import keys
from minisub.config import ConfigError

# Every part name a model in minisub declares, with 'all': what a model-free parse accepts for
# ``perturbed.part``. Each model's own set is checked when the lineage meets it (``Lineage.check``).
PARTS = ("all", "hidden", "head", "embeddings", "attention", "mlp", "unembedding")


# --- parameters and definitions ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Param:
    """A lineage parameter: how to parse it, what is allowed, and its default (None: required).

    ``model_choices(model)``: the values allowed for a given model (e.g. its parts), checked when
    the lineage meets the model; ``check``/``allowed`` hold for every model.
    """

    parse: Callable
    check: Callable
    allowed: str
    default: object = None
    model_choices: Callable | None = None


def number(low: float | None = None, high: float | None = None, default=None) -> Param:
    """A float parameter in [low, high] (either bound may be open-ended: None)."""
    if low is not None and high is not None:
        allowed = f"a number in [{low:g}, {high:g}]"
    elif low is not None or high is not None:
        allowed = f"a number >= {low:g}" if low is not None else f"a number <= {high:g}"
    else:
        allowed = "a number"
    ok = lambda v: (low is None or v >= low) and (high is None or v <= high)
    return Param(float, ok, allowed, default)


def choice(*values: str, default: str | None = None) -> Param:
    """A string parameter, one of ``values``."""
    return Param(str, lambda v: v in values, "one of " + ", ".join(map(repr, values)), default)


@dataclasses.dataclass(frozen=True)
class Definition:
    """A registered lineage: its function, parameters and properties (what it needs, as data)."""

    name: str
    fn: Callable
    params: Mapping[str, Param]
    # It starts from parameters other than the teacher's init (a donor world's: needs >= 2 seeds).
    needs_fresh: bool = False
    # The student is another network than the teacher's (the pipeline's student spec).
    other_network: bool = False
    # The pipeline distils the student on the reference's logits (real images) before its noise phase.
    matches_behaviour: bool = False
    # Model parts it addresses (the model must declare them) and model methods it calls.
    parts: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    # (teacher model, student model, **params) -> None, or what the student network must be.
    student_requirement: Callable | None = None


LINEAGES: dict[str, Definition] = {}
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def register(name: str, fn: Callable | None = None, *, params: Mapping[str, Param] | None = None,
             needs_fresh: bool = False, other_network: bool = False, matches_behaviour: bool = False,
             parts: tuple[str, ...] = (), requires: tuple[str, ...] = (), student_requirement: Callable | None = None,
             replace: bool = False):
    """Add the lineage ``name`` (``fn(model, teacher_init, fresh, key, **params)``); usable as a decorator.

    Its properties are declared here (see ``Definition``); from then on ``parse`` accepts it, error
    messages list it, and every pipeline runs it. ``replace=True`` overwrites a registered name.
    """
    if not _NAME.match(name):
        raise ValueError(f"a lineage name must match {_NAME.pattern}, got {name!r}")

    def add(fn: Callable) -> Callable:
        if name in LINEAGES and not replace:
            raise ValueError(f"lineage {name!r} is already registered (replace=True overwrites it)")
        LINEAGES[name] = Definition(name, fn, types.MappingProxyType(dict(params or {})), needs_fresh, other_network,
                                    matches_behaviour, tuple(parts), tuple(requires), student_requirement)
        return fn

    return add if fn is None else add(fn)


def unregister(name: str) -> None:
    """Remove a lineage added by ``register`` (the built-in ones stay)."""
    if name in BUILTIN:
        raise ValueError(f"lineage {name!r} is built in and cannot be removed")
    LINEAGES.pop(name, None)


# --- the typed value -------------------------------------------------------------------------------
class Lineage(str):
    """A parsed lineage: the text as written (its ``str`` value), ``name``, ``params``, ``definition``.

    Frozen. Equality and hashing are the text's, like the run id (``perturbed(sigma=0.1)`` and
    ``perturbed(sigma=0.1, part=all)`` compute the same but are different run ids); ``canonical``
    spells every parameter. ``parse(str(lin)) == lin``.
    """

    name: str
    params: Mapping[str, object]
    definition: Definition

    def __new__(cls, text: str, definition: Definition, params: Mapping[str, object]):
        self = super().__new__(cls, text)
        object.__setattr__(self, "name", definition.name)
        object.__setattr__(self, "params", types.MappingProxyType(dict(params)))
        object.__setattr__(self, "definition", definition)
        return self

    def __setattr__(self, name, value):
        raise AttributeError(f"a Lineage is frozen: cannot set {name}")

    __delattr__ = __setattr__

    def __reduce__(self):  # pickled (worker processes) and deep-copied as its text, parsed again
        return parse, (str(self),)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    @property
    def canonical(self) -> str:
        """``name(param=value, ...)`` with every parameter, defaults included, in declared order."""
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.params.items())})"

    @property
    def needs_fresh(self) -> bool:
        return self.definition.needs_fresh

    @property
    def other_network(self) -> bool:
        return self.definition.other_network

    @property
    def matches_behaviour(self) -> bool:
        return self.definition.matches_behaviour

    def check(self, model) -> "Lineage":
        """This lineage, after checking it applies to ``model`` (its parts, methods); ConfigError otherwise."""
        d, where = self.definition, f"lineage={str(self)!r} is not allowed for {type(model).__name__}"
        model_parts = tuple(getattr(model, "parts", ()))
        if not set(d.parts) <= set(model_parts):
            raise ConfigError(f"{where}: {d.name} needs a model with parts {_names(d.parts)}; "
                              f"this one has {_names(model_parts) or 'none declared'}")
        for method in d.requires:
            if not callable(getattr(model, method, None)):
                raise ConfigError(f"{where}: {d.name} needs a model with a {method}() method")
        for key, p in d.params.items():
            if p.model_choices is not None and self.params[key] not in (allowed := tuple(p.model_choices(model))):
                raise ConfigError(f"{where}: {d.name}.{key} must be one of {_names(allowed)}")
        return self

    def student_problem(self, teacher_model, student_model) -> str | None:
        """None, or what the student network must be for this lineage (e.g. a head of the teacher's shape)."""
        req = self.definition.student_requirement
        return None if req is None else req(teacher_model, student_model, **self.params)

    def init(self, model, teacher_init, fresh, key=None):
        """The student's initial parameters (a pytree like ``teacher_init``) for the student ``model``."""
        return self.definition.fn(model, teacher_init, fresh, key, **self.check(model).params)


def _names(values) -> str:
    return ", ".join(map(repr, values))


_SYNTAX = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(?:\((.*)\))?\s*$")


def parse(text, model=None) -> Lineage:
    """``'perturbed(sigma=0.1, part=head)'`` -> a validated ``Lineage`` (itself when already one).

    With ``model``, also checked against it (``Lineage.check``). Errors are one ConfigError line
    naming the field, the parameter and the allowed values.
    """
    lin = text if isinstance(text, Lineage) else _parse(text)
    return lin if model is None else lin.check(model)


def _parse(text) -> Lineage:
    m = _SYNTAX.match(text) if isinstance(text, str) else None
    where = f"lineage={text!r} is not allowed"
    if not m or m.group(1) not in LINEAGES:
        raise ConfigError(f"{where}: lineage must be one of {_names(LINEAGES)}, optionally with parameters, "
                          "e.g. 'interpolated(alpha=0.5)'")
    d = LINEAGES[m.group(1)]
    given: dict = {}
    for item in filter(None, (s.strip() for s in (m.group(2) or "").split(","))):
        key, _, value = (s.strip() for s in item.partition("="))
        if key not in d.params:
            raise ConfigError(f"{where}: {d.name} takes {', '.join(d.params) or 'no parameters'}")
        if key in given:
            raise ConfigError(f"{where}: {d.name}.{key} is given twice")
        try:
            given[key] = d.params[key].parse(value)
        except ValueError:
            raise ConfigError(f"{where}: {d.name}.{key} must be {d.params[key].allowed}") from None
    for key, p in d.params.items():
        if key not in given and p.default is None:
            raise ConfigError(f"{where}: {d.name} needs {key}: {d.name}.{key} must be {p.allowed}")
        if not p.check(given.setdefault(key, p.default)):
            raise ConfigError(f"{where}: {d.name}.{key} must be {p.allowed}")
    return Lineage(text, d, {k: given[k] for k in d.params})


def parse_arms(arms: tuple) -> tuple:
    """``arms`` (dataclasses with a ``lineage`` field) with every lineage parsed: a config's boundary."""
    return tuple(a if isinstance(a.lineage, Lineage) else dataclasses.replace(a, lineage=parse(a.lineage))
                 for a in arms)


def student_init(text, model, teacher_init, fresh, key=None):
    """The student's initial parameters under lineage ``text`` (see the module docstring)."""
    return parse(text).init(model, teacher_init, fresh, key)


# --- parameter trees ---------------------------------------------------------------------------------
def leaf_paths(tree) -> list[tuple[str, object]]:
    """``[(dotted path, leaf)]`` of a parameter tree: ``('hidden.0.kernel', array)``, ...; tree order."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path]
        if names[-1] == "value":  # an nnx.Variable's payload
            names = names[:-1]
        out.append((".".join(names), leaf))
    return out


def layer_of(path: str) -> str:
    """The layer a leaf belongs to: its path without the leaf's own name (``hidden.0``, ``''`` at the root)."""
    return path.rpartition(".")[0]


def map_leaves(fn, *trees):
    """``fn(path, *leaves)`` over aligned leaves of ``trees``; the first tree's structure."""
    flat = [leaf_paths(t) for t in trees]
    new = [fn(path, *(f[k][1] for f in flat)) for k, (path, _) in enumerate(flat[0])]
    return jax.tree.unflatten(jax.tree.structure(trees[0]), new)


def _model_parts(model) -> tuple[str, ...]:
    return ("all", *getattr(model, "parts", ()))


# --- the built-in lineages ----------------------------------------------------------------------------
def shared(model, teacher_init, fresh, key):
    """The student starts exactly at the teacher's initial parameters."""
    return teacher_init


def different(model, teacher_init, fresh, key):
    """The student starts at an independent draw (another seed's init: same distribution)."""
    return fresh


def interpolated(model, teacher_init, fresh, key, alpha: float):
    """θ_S⁰ = √α·θ_T⁰ + √(1−α)·θ_fresh: the weight variance is kept at every α (1: shared, 0: fresh).

    That holds for zero-mean random matrices (kernels, embeddings). Vectors (biases, LayerNorm
    scales and offsets) are not zero-mean draws: they take the linear mix α·θ_T⁰ + (1−α)·θ_fresh,
    which keeps a common value (zero biases, unit scales) exactly, where √α + √(1−α) > 1 would
    inflate it.
    """
    a, b = np.sqrt(alpha), np.sqrt(1.0 - alpha)
    mix = lambda t, f: a * t + b * f if jnp.ndim(t) >= 2 else alpha * t + (1.0 - alpha) * f
    return jax.tree.map(mix, teacher_init, fresh)


def perturbed(model, teacher_init, fresh, key, sigma: float, part: str = "all"):
    """θ_T⁰ plus Gaussian noise of σ times each weight matrix's std, on the matrices of ``part``.

    ``part``: 'all', or one of the model's parts (``model.parts``). Only matrices (kernels,
    embeddings) move: vectors (biases, LayerNorm parameters) have no spread at init. Layer ``k``
    of the sorted layer names draws its noise from ``member(key, k)``.
    """
    paths = [p for p, _ in leaf_paths(teacher_init)]
    layers = sorted({layer_of(p) for p in paths})
    matrices = [p for p, w in leaf_paths(teacher_init) if jnp.ndim(w) >= 2]
    # the j-th matrix of a layer (j >= 1: a layer with several) folds j into its layer's key
    rank = {p: [q for q in matrices if layer_of(q) == layer_of(p)].index(p) for p in matrices}

    def leaf(path, w):
        if path not in rank or not (part == "all" or model.part_of(path) == part):
            return w
        k = keys.member(key, layers.index(layer_of(path)))
        eps = jax.random.normal(jax.random.fold_in(k, rank[path]) if rank[path] else k, w.shape, w.dtype)
        return w + sigma * jnp.std(w) * eps

    return map_leaves(leaf, teacher_init)


def shared_head(model, teacher_init, fresh, key):
    """The last (output) layer is the teacher's init; every hidden layer is fresh."""
    return map_leaves(lambda path, t, f: t if model.part_of(path) == "head" else f, teacher_init, fresh)


def shared_hidden(model, teacher_init, fresh, key):
    """Every hidden layer is the teacher's init; the output layer is fresh."""
    return map_leaves(lambda path, t, f: f if model.part_of(path) == "head" else t, teacher_init, fresh)


def permuted(model, teacher_init, fresh, key):
    """The teacher's init reparametrised by ``model.permute``: same function, other parameters."""
    return model.permute(teacher_init, key)


def behaviourally_matched(model, teacher_init, fresh, key):
    """Starts at a fresh init; the pipeline then distils it on the reference's logits (real images)."""
    return fresh


def other_architecture(model, teacher_init, fresh, key, head: str = "fresh"):
    """A student whose hidden layers differ from the teacher's: fresh, or with the teacher's head init.

    ``head='shared'`` needs the head's shape to agree (the last hidden widths equal).
    """
    if head == "fresh":
        return fresh
    t_head, s_head = teacher_init["head"]["kernel"].shape, fresh["head"]["kernel"].shape
    if t_head != s_head:
        raise ConfigError(f"lineage other_architecture(head=shared) needs heads of one shape: the teacher's is "
                          f"{t_head}, the student's {s_head}")
    return fresh | {"head": teacher_init["head"]}


def _head_fits(teacher_model, student_model, head: str) -> str | None:
    if head == "shared" and student_model.hidden[-1] != teacher_model.hidden[-1]:
        return f"a last width equal to the teacher's ({teacher_model.hidden[-1]}) for other_architecture(head=shared)"
    return None


register("shared", shared)
register("different", different, needs_fresh=True)
register("interpolated", interpolated, params={"alpha": number(0, 1)}, needs_fresh=True)
register("perturbed", perturbed, params={
    "sigma": number(0),
    "part": Param(str, lambda v: v in PARTS, "one of " + _names(PARTS), "all", _model_parts),
})
register("shared_head", shared_head, needs_fresh=True, parts=("hidden", "head"))
register("shared_hidden", shared_hidden, needs_fresh=True, parts=("hidden", "head"))
register("permuted", permuted, requires=("permute",))
register("behaviourally_matched", behaviourally_matched, needs_fresh=True, matches_behaviour=True)
register("other_architecture", other_architecture, params={"head": choice("fresh", "shared", default="fresh")},
         needs_fresh=True, other_network=True, student_requirement=_head_fits)
BUILTIN = frozenset(LINEAGES)


# --- donors --------------------------------------------------------------------------------------------
def derangement(key, n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` with no fixed point (n >= 2), by rejection."""
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2 members, got n={n}")
    for attempt in range(10_000):  # P(derangement) -> 1/e, so this ends after ~3 draws
        perm = np.asarray(jax.random.permutation(keys.member(key, attempt), n))
        if not np.any(perm == np.arange(n)):
            return perm
    raise RuntimeError("no derangement found")  # pragma: no cover


def donors(seed: int, seeds: int, stream: str = "donor") -> np.ndarray:
    """``donor[i]``: whose init world ``i``'s other-init students take (a derangement; zeros below 2 seeds)."""
    if seeds < 2:
        return np.zeros(seeds, np.int32)
    return derangement(keys.branch(keys.root(seed), stream), seeds).astype(np.int32)
