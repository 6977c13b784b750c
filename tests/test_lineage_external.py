"""Lineages as typed values on any model, and lineages registered from outside minisub.

``scaled`` and ``donor_scaled`` are registered *here* (the test file stands for a user's code):
they parse, validate, list in error messages and run end to end in mnist-aux and lm-owl without
any edit to minisub.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import flat, tiny_config
from minisub import keys, lineage
from minisub import config
from minisub.config import ConfigError
from minisub.lm import pipeline as lm_pipeline
from minisub.lm.transformer import TransformerSpec
from minisub.mlp import models, pipeline

MLP = models.MLPSpec(784, (64, 32), 10, 3)
TIED = TransformerSpec(vocab=200, context=8, layers=2, width=64, heads=4, mlp_ratio=2, tied_embeddings=True)
UNTIED = dataclasses.replace(TIED, tied_embeddings=False)
FACTOR = lineage.Param(float, lambda v: v > 0, "a number > 0")


def scaled(model, teacher_init, fresh, key, factor):
    """The teacher's init with every matrix multiplied by ``factor`` (vectors as they are)."""
    return jax.tree.map(lambda w: w * factor if jnp.ndim(w) >= 2 else w, teacher_init)


@pytest.fixture(scope="module", autouse=True)
def registered():
    """Register the external lineages for this module only (other test files see the built-in set)."""
    lineage.register("scaled", scaled, params={"factor": FACTOR})

    @lineage.register("donor_scaled", params={"factor": FACTOR}, needs_fresh=True, matches_behaviour=True)
    def donor_scaled(model, teacher_init, fresh, key, factor):
        return jax.tree.map(lambda w: w * factor, fresh)

    yield
    for name in ("scaled", "donor_scaled"):
        lineage.unregister(name)


def _pair(spec, seed=1):
    return spec.init(keys.root(seed)), spec.init(keys.root(seed + 1)), keys.root(seed + 2)


# --- the typed value ---------------------------------------------------------------------------------

TEXTS = ["shared", "different", "interpolated(alpha=0.5)", "perturbed(sigma=0.1, part=hidden)",
         "perturbed(sigma=0.1)", "perturbed( sigma = 0.2 , part=attention )", "shared_head", "shared_hidden",
         "permuted", "behaviourally_matched", "other_architecture(head=shared)", "scaled(factor=2)"]


@pytest.mark.parametrize("text", TEXTS)
def test_a_lineage_round_trips_and_is_its_text(text):
    lin = lineage.parse(text)
    assert isinstance(lin, str) and str(lin) == text and lin == text and hash(lin) == hash(text)
    again = lineage.parse(str(lin))
    assert again == lin and again.name == lin.name and dict(again.params) == dict(lin.params)
    canon = lineage.parse(lin.canonical)  # every parameter spelled: the same lineage
    assert canon.name == lin.name and dict(canon.params) == dict(lin.params)
    assert lineage.parse(lin) is lin  # parsed once: a Lineage passes through
    for other in (pickle.loads(pickle.dumps(lin)), copy.deepcopy(lin)):
        assert other == lin and type(other) is lineage.Lineage and dict(other.params) == dict(lin.params)
    assert json.loads(json.dumps({"lineage": lin})) == {"lineage": text}


def test_a_lineage_is_frozen_and_carries_its_parameters_and_properties():
    lin = lineage.parse("perturbed(sigma=0.1)")
    assert lin.name == "perturbed" and dict(lin.params) == {"sigma": 0.1, "part": "all"}
    assert lin.canonical == "perturbed(sigma=0.1, part=all)"
    with pytest.raises(AttributeError):
        lin.name = "shared"
    with pytest.raises(TypeError):
        lin.params["sigma"] = 0.2
    props = {t: (lineage.parse(t).needs_fresh, lineage.parse(t).other_network, lineage.parse(t).matches_behaviour)
             for t in ("shared", "different", "permuted", "behaviourally_matched", "other_architecture")}
    assert props == {"shared": (False, False, False), "different": (True, False, False),
                     "permuted": (False, False, False), "behaviourally_matched": (True, False, True),
                     "other_architecture": (True, True, False)}


@pytest.mark.parametrize("text,model,allowed", [
    ("cousin", None, "lineage must be one of 'shared', 'different'"),
    ("cousin", None, "'scaled', 'donor_scaled'"),  # registered lineages are listed too
    ("scaled", None, "scaled needs factor: scaled.factor must be a number > 0"),
    ("scaled(factor=-1)", None, "scaled.factor must be a number > 0"),
    ("scaled(factor=1, sigma=2)", None, "scaled takes factor"),
    ("scaled(factor=1, factor=2)", None, "scaled.factor is given twice"),
    ("perturbed(sigma=0.1, part=tail)", None, "perturbed.part must be one of 'all', 'hidden', 'head', 'embeddings'"),
    ("perturbed(sigma=0.1, part=attention)", MLP, "for MLPSpec: perturbed.part must be one of 'all', 'hidden', 'head'"),
    ("perturbed(sigma=0.1, part=hidden)", TIED,
     "for TransformerSpec: perturbed.part must be one of 'all', 'embeddings', 'attention', 'mlp'"),
    ("perturbed(sigma=0.1, part=unembedding)", TIED, "one of 'all', 'embeddings', 'attention', 'mlp'"),
    ("shared_head", TIED, "shared_head needs a model with parts 'hidden', 'head'; this one has 'embeddings'"),
    ("permuted", object(), "permuted needs a model with a permute() method"),
])
def test_errors_are_one_line_naming_the_field_and_the_allowed_values(text, model, allowed):
    with pytest.raises(ConfigError) as err:
        lineage.parse(text, model)
    message = str(err.value)
    assert message.startswith(f"lineage={text!r} is not allowed") and "\n" not in message, message
    assert allowed in message, message


def test_register_refuses_bad_or_taken_names():
    with pytest.raises(ValueError, match="already registered"):
        lineage.register("shared", scaled)
    with pytest.raises(ValueError, match="must match"):
        lineage.register("Bad-Name", scaled)
    with pytest.raises(ValueError, match="built in"):
        lineage.unregister("shared")


# --- parts per model -----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,parts", [(MLP, ("hidden", "head")), (TIED, ("embeddings", "attention", "mlp")),
                                        (UNTIED, ("embeddings", "attention", "mlp", "unembedding"))])
def test_every_leaf_has_a_declared_part_and_every_part_a_matrix(spec, parts):
    assert spec.parts == parts and set(parts) <= set(lineage.PARTS)
    by_part = {}
    for path, w in lineage.leaf_paths(spec.init(keys.root(0))):
        by_part.setdefault(spec.part_of(path), []).append((path, w.ndim))
    assert set(by_part) == set(parts), by_part
    for part, leaves in by_part.items():
        assert any(ndim >= 2 for _, ndim in leaves), part  # perturbed(part=...) always moves something


def test_transformer_parts_map_the_leaves_as_documented():
    part = UNTIED.part_of
    assert part("embed.embedding") == part("pos") == "embeddings"
    assert part("blocks.1.attn.qkv.kernel") == part("blocks.0.ln_attn.scale") == "attention"
    assert part("blocks.0.up.kernel") == part("blocks.1.down.kernel") == part("blocks.0.ln_mlp.bias") == "mlp"
    assert part("unembed.kernel") == part("ln_f.scale") == "unembedding"
    assert TIED.part_of("ln_f.scale") == "embeddings"  # tied: the readout is the embedding's


@pytest.mark.parametrize("spec", [TIED, UNTIED])
def test_perturbed_changes_exactly_the_matrices_of_its_part(spec):
    teacher, fresh, key = _pair(spec)
    for part in spec.parts:
        student = flat(lineage.student_init(f"perturbed(sigma=0.2, part={part})", spec, teacher, fresh, key))
        for path, t in flat(teacher).items():
            moved = spec.part_of(path) == part and t.ndim >= 2
            assert np.array_equal(student[path], t) != moved, (part, path)
            if moved:
                assert abs((student[path] - t).std() / t.std() / 0.2 - 1) < 0.15, (part, path)


def test_transformer_permuted_computes_the_same_function_with_other_parameters():
    for spec in (TIED, UNTIED):
        teacher, fresh, key = _pair(spec)
        student = lineage.student_init("permuted", spec, teacher, fresh, key)
        tokens = jax.random.randint(keys.root(5), (16, spec.context), 0, spec.vocab)
        np.testing.assert_allclose(spec.apply(student, tokens), spec.apply(teacher, tokens), rtol=1e-4, atol=1e-5)
        t, s = flat(teacher), flat(student)
        for path in t:
            moves = path.endswith(("qkv.kernel", "out.kernel", "up.kernel", "down.kernel"))
            assert np.array_equal(s[path], t[path]) != moves, path
            np.testing.assert_array_equal(np.sort(s[path].ravel()), np.sort(t[path].ravel()), err_msg=path)


def test_two_head_permutations_are_never_the_identity():
    spec = dataclasses.replace(TIED, width=16, heads=2, layers=1)
    teacher, permute = spec.init(keys.root(0)), jax.jit(spec.permute)
    for seed in range(12):
        student = flat(permute(teacher, keys.root(seed)))
        assert not np.array_equal(student["blocks.0.attn.out.kernel"], flat(teacher)["blocks.0.attn.out.kernel"])


def test_interpolated_keeps_the_variance_of_transformer_matrices_and_the_unit_scales():
    teacher, fresh, key = _pair(UNTIED)
    student = flat(lineage.student_init("interpolated(alpha=0.5)", UNTIED, teacher, fresh, key))
    for path, t in flat(teacher).items():
        if t.ndim >= 2 and t.size >= 4096:  # sample std within a few % of the init's
            assert abs(student[path].std() / t.std() - 1) < 0.05, path
        elif path.endswith("scale"):
            np.testing.assert_array_equal(student[path], t)  # 1 in both inits: stays 1, not √2


# --- the pipelines ask the value ------------------------------------------------------------------------

def test_an_external_lineages_properties_drive_the_mlp_config():
    with pytest.raises(ConfigError, match="seeds=1 is not allowed"):
        tiny_config(seeds=1, arms=(pipeline.Arm("d", "donor_scaled(factor=1)", "aux"),))
    cfg = tiny_config(seeds=1, arms=(pipeline.Arm("s", "scaled(factor=1)", "aux"),))
    assert cfg.matched_arms == () and isinstance(cfg.arms[0].lineage, lineage.Lineage)
    cfg = tiny_config(arms=(pipeline.Arm("s", "shared", "aux"), pipeline.Arm("d", "donor_scaled(factor=1)", "aux")))
    assert cfg.matched_arms == (1,)


def test_lm_config_takes_every_lineage_of_a_transformer_and_refuses_the_rest_in_one_line():
    from minisub_experiments import lm_owl

    base = lm_owl.PRESETS["test"].lm_config
    arms = tuple(lm_pipeline.LMArm(f"a{k}", t, "teacher") for k, t in enumerate(
        ("shared", "different", "interpolated(alpha=0.5)", "perturbed(sigma=0.1, part=mlp)", "permuted",
         "scaled(factor=0.5)")))
    cfg = dataclasses.replace(base, arms=arms)
    assert all(isinstance(a.lineage, lineage.Lineage) for a in cfg.arms)
    for text, allowed in (("behaviourally_matched", "without a pre-phase"),
                          ("other_architecture", "without a pre-phase"),
                          ("perturbed(sigma=0.1, part=head)", "'all', 'embeddings', 'attention', 'mlp'"),
                          ("shared_hidden", "needs a model with parts 'hidden', 'head'")):
        with pytest.raises(ConfigError) as err:
            dataclasses.replace(base, arms=(lm_pipeline.LMArm("x", text, "teacher"),))
        assert allowed in str(err.value) and "\n" not in str(err.value), str(err.value)


# --- end to end, without editing minisub ---------------------------------------------------------------

def test_an_external_lineage_runs_end_to_end_in_mnist_aux(fake_mnist, monkeypatch):
    from minisub.mlp import mnist
    from minisub_experiments import mnist_aux

    monkeypatch.setattr(mnist, "load_cached", lambda *a, **k: fake_mnist)
    arms = (pipeline.Arm("shared", "shared", "aux"), pipeline.Arm("same", "scaled(factor=1)", "aux"),
            pipeline.Arm("half", "scaled(factor=0.5)", "aux"))
    cfg = tiny_config(arms=arms)
    summary, directory = mnist_aux.run(cfg, command="test")
    assert summary["config"]["arms"][2]["lineage"] == "scaled(factor=0.5)"
    start = {a: summary["geometry"][a]["dist_init"]["total"]["mean"] for a in ("shared", "same", "half")}
    assert start["shared"] == start["same"] == 0 < start["half"], start  # scaled(1) starts at the teacher's init
    for arm in ("same", "half"):
        acc = summary["accuracy"][arm]
        assert acc["n"] == cfg.seeds and np.all(np.isfinite(acc["values"]))
    np.testing.assert_allclose(summary["accuracy"]["same"]["values"], summary["accuracy"]["shared"]["values"],
                               atol=1e-6)


def test_an_external_lineage_runs_end_to_end_in_lm_owl():
    from minisub_experiments import lm_owl

    arms = ("shared", "half=scaled(factor=0.5):teacher", "perm=permuted:teacher")
    cfg = config.replace(lm_owl.PRESETS["test"], arms=arms)  # lm-owl's config nests LMConfig: flat names
    assert [a.lineage.name for a in cfg.lm_config.arms] == ["shared", "scaled", "permuted"]
    summary, _ = lm_owl.run(cfg, command="test")
    got = summary["arms"]
    assert list(got) == list(arms) and got[arms[1]]["lineage"] == "scaled(factor=0.5)"
    for name in arms:
        assert got[name]["trait_gain"]["n"] == cfg.seeds and np.all(np.isfinite(got[name]["trait_gain"]["values"]))
    assert got["shared"]["geometry"]["dist_init"]["mean"] == 0 < got[arms[1]]["geometry"]["dist_init"]["mean"]
    # a permuted reference computes the reference's function: the same answers before training
    np.testing.assert_allclose(got[arms[2]]["p_trait_before"]["values"], got["shared"]["p_trait_before"]["values"],
                               atol=1e-4)
    assert got[arms[2]]["geometry"]["dist_init"]["mean"] > 0
