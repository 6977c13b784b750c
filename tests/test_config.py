"""Config validation, command-line overrides and the run id (digest)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minisub import config
from minisub.config import ConfigError
from minisub.mlp.pipeline import PAPER_ARMS, Arm, AuxConfig


@pytest.mark.parametrize("kwargs, field, allowed", [
    (dict(seeds=0), "seeds", ">= 1"),
    (dict(teacher_lr=0.0), "teacher_lr", "> 0"),
    (dict(student_lr=-1e-3), "student_lr", "> 0"),
    (dict(n_aux=0), "n_aux", ">= 1"),
    (dict(n_noise=100, student_batch=101), "student_batch", "[1, 100]"),
    (dict(n_train=100, teacher_batch=200), "teacher_batch", "[1, 100]"),
    (dict(n_train=60001), "n_train", "[1, 60000]"),
    (dict(noise="pink"), "noise", "'uniform', 'gaussian', 'blurred', 'zeros', 'mnist'"),
    (dict(loss="hinge"), "loss", "'kl'"),
    (dict(activation="swish"), "activation", "'relu'"),
    (dict(init="xavier"), "init", "'normal_fan_in'"),
    (dict(teacher_optimizer="lion"), "teacher_optimizer", "'adam', 'sgd'"),
    (dict(temperature=0.0), "temperature", "> 0"),
    (dict(hidden=()), "hidden", "widths >= 1"),
    (dict(hidden=(16, 0)), "hidden", "widths >= 1"),
    (dict(arms=()), "arms", "at least one"),
    (dict(arms=(Arm("x", "cousin", "aux"),)), "lineage", "'shared', 'different', 'interpolated'"),
    (dict(arms=(Arm("x", "shared", "some"),)), "arms.outputs", "'aux', 'class', 'all'"),
    (dict(seeds=1), "seeds", ">= 2 when an arm starts from another seed's init"),
])
def test_invalid_values_are_rejected_naming_field_and_allowed_values(kwargs, field, allowed):
    with pytest.raises(ConfigError) as err:
        AuxConfig(**kwargs)
    message = str(err.value)
    assert message.startswith(f"{field}="), message
    assert allowed in message, message
    assert "\n" not in message


def test_one_seed_is_fine_when_every_arm_shares_the_init():
    cfg = AuxConfig(seeds=1, arms=(PAPER_ARMS[0], PAPER_ARMS[1]))
    assert cfg.seeds == 1


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_override_parses_each_fields_type():
    cfg = config.override(AuxConfig(), {
        "seeds": "7", "teacher_lr": "1e-3", "student_lr": "0.5", "hidden": "256,128", "noise": "gaussian",
        "temperature": "2",
    })
    assert cfg.seeds == 7 and isinstance(cfg.seeds, int)
    assert cfg.teacher_lr == 1e-3 and cfg.student_lr == 0.5 and isinstance(cfg.temperature, float)
    assert cfg.hidden == (256, 128) and cfg.noise == "gaussian"
    assert config.override(AuxConfig(), {"hidden": "64x64x32"}).hidden == (64, 64, 32)
    assert config.override(AuxConfig(), {"hidden": "512"}).hidden == (512,)
    assert config.override(AuxConfig(), {"student-lr": "0.25"}).student_lr == 0.25  # dashes work too


def test_override_leaves_the_original_alone():
    base = AuxConfig()
    changed = config.override(base, {"seeds": "3"})
    assert base.seeds == 100 and changed.seeds == 3
    assert config.override(base, {}) == base


def test_override_rejects_unknown_fields_listing_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        config.override(AuxConfig(), {"bogus": "1"})
    message = str(err.value)
    assert "'bogus'" in message
    for field in dataclasses.fields(AuxConfig):
        assert field.name in message


@pytest.mark.parametrize("field, text", [("seeds", "many"), ("seeds", "1.5"), ("teacher_lr", "fast"),
                                         ("hidden", "256,wide")])
def test_override_rejects_unparsable_values_naming_the_field(field, text):
    with pytest.raises(ConfigError, match=rf"^{field}=.*must be a"):
        config.override(AuxConfig(), {field: text})


def test_override_validates_the_result():
    with pytest.raises(ConfigError, match="^seeds=0"):
        config.override(AuxConfig(), {"seeds": "0"})
    with pytest.raises(ConfigError, match="^student_batch="):
        config.override(AuxConfig(), {"n_noise": "10"})


def test_override_refuses_fields_without_a_command_line_form():
    with pytest.raises(ConfigError, match="arms"):
        config.override(AuxConfig(), {"arms": "student_aux"})


def test_configs_are_hashable_and_compare_by_value():
    # They are jit static arguments: equal configs must hash equal.
    a, b = AuxConfig(seeds=5), config.override(AuxConfig(), {"seeds": "5"})
    assert a == b and hash(a) == hash(b)


def test_digest_is_a_pure_function_of_the_values():
    assert config.digest(AuxConfig()) == config.digest(AuxConfig())
    assert config.digest(AuxConfig(seeds=5)) == config.digest(config.override(AuxConfig(), {"seeds": "5"}))
    assert len(config.digest(AuxConfig())) == 16


def test_equal_configs_have_equal_digests():
    a, b = AuxConfig(teacher_lr=1, temperature=2), AuxConfig(teacher_lr=1.0, temperature=2.0)
    assert a == b
    assert config.digest(a) == config.digest(b)


def test_digest_is_stable_across_processes():
    code = "from minisub import config; from minisub.mlp import pipeline; print(config.digest(pipeline.AuxConfig(seeds=5, hidden=(32,))))"
    root = Path(config.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env, check=True)
    assert out.stdout.strip() == config.digest(AuxConfig(seeds=5, hidden=(32,)))


# Another valid value for every field; a new field must be added here (and so be shown to enter the id).
ALTERNATIVES = dict(
    seeds=101, seed=1, hidden=(256,), activation="gelu", init="he_normal", n_aux=4,
    n_train=59_999, n_test=9_999, teacher_epochs=6, teacher_lr=1e-3, teacher_batch=512, teacher_optimizer="sgd",
    n_noise=59_999, noise="gaussian", student_epochs=6, student_lr=1e-3, student_batch=512,
    student_optimizer="sgd", loss="mse", temperature=2.0, arms=PAPER_ARMS[:2],
    trace_every=5, trait_batch=512, n_probe=500, projection="trait",
    student_hidden=(128, 128), student_activation="tanh", match_epochs=3, teacher_order=1,
)
# Fields whose alternative is only valid together with others.
OTHER_NETWORK = (Arm("other", "other_architecture", "aux"),)
COUPLED = {"student_hidden": dict(arms=OTHER_NETWORK), "student_activation": dict(arms=OTHER_NETWORK)}


def test_digest_changes_when_any_field_changes():
    fields = [f.name for f in dataclasses.fields(AuxConfig)]
    assert set(fields) <= set(ALTERNATIVES), f"give an alternative value for {set(fields) - set(ALTERNATIVES)}"
    base = AuxConfig()
    digests = {"<default>": config.digest(base)}
    for name in fields:
        changed = dataclasses.replace(base, **{name: ALTERNATIVES[name], **COUPLED.get(name, {})})
        assert getattr(changed, name) != getattr(base, name)
        digests[name] = config.digest(changed)
    assert len(set(digests.values())) == len(digests), digests


def test_digest_sees_inside_the_arms():
    renamed = (Arm("student_aux2", "shared", "aux"), *PAPER_ARMS[1:])
    relineaged = (Arm("student_aux", "different", "aux"), *PAPER_ARMS[1:])
    digests = {config.digest(AuxConfig(arms=arms)) for arms in (PAPER_ARMS, renamed, relineaged)}
    assert len(digests) == 3


def test_to_dict_is_json_plain():
    d = config.to_dict(AuxConfig())
    assert d["hidden"] == [256, 256] and d["arms"][0] == {
        "name": "student_aux", "lineage": "shared", "outputs": "aux", "lr": None, "liminal": 0.0, "committee": 1}


@dataclasses.dataclass(frozen=True)
class _Inner:
    a: int = 1


@dataclasses.dataclass(frozen=True)
class _Before:
    x: int = 1
    inner: _Inner = _Inner()


@dataclasses.dataclass(frozen=True)
class _InnerAfter:
    a: int = 1
    b: float = config.late(0.5)


@dataclasses.dataclass(frozen=True)
class _After:
    x: int = 1
    inner: _InnerAfter = _InnerAfter()
    mode: str = config.late("old")


def test_late_fields_at_their_defaults_leave_run_ids_unchanged():
    # digest hashes the class name and to_dict: equal dicts, equal run ids for a class that gained late fields
    assert config.to_dict(_After()) == config.to_dict(_Before())  # nested late fields too


def test_late_fields_set_away_from_their_defaults_change_the_run_id():
    assert config.to_dict(_After(mode="new")) == {**config.to_dict(_Before()), "mode": "new"}
    assert config.to_dict(_After(inner=_InnerAfter(b=0.25)))["inner"] == {"a": 1, "b": 0.25}
    assert config.digest(_After(mode="new")) != config.digest(_After())


def test_stored_run_ids_of_the_presets_do_not_move():
    """Results on disk and in figures/ are found by these ids: a change here orphans them."""
    from minisub_experiments import atlas, lm_owl, mnist_aux, theorem_one_step
    from minisub.lm import pipeline as lm_pipeline
    assert config.digest(mnist_aux.PRESETS["paper"]) == "71afdbe1543e38a7"
    assert config.digest(theorem_one_step.PRESETS["paper"]) == "b978d35c8028ef8c"
    assert config.digest(atlas.PRESETS["paper"]) == "555d31ab548592f7"
    assert config.digest(lm_owl.PRESETS["paper"]) == "b969178ebe839d57"
    key = lm_pipeline.PretrainKey.of(lm_owl.PRESETS["paper"].lm_config)
    assert config.digest(key) == "1f933dcefb0a710d"


# --- the command line's view of a config: describe, nested overrides, arms, non-finite values ---
@pytest.mark.parametrize("field, text", [("teacher_lr", "inf"), ("student_lr", "nan"), ("temperature", "-inf")])
def test_non_finite_values_are_refused_naming_the_field_and_what_validation_allows(field, text):
    with pytest.raises(ConfigError) as err:
        config.override(AuxConfig(), {field: text})
    assert str(err.value) == f"{field}={float(text)!r} is not allowed: {field} must be a finite number (a number > 0)"


def test_non_finite_values_are_refused_inside_lists_and_without_a_constraint():
    @dataclasses.dataclass(frozen=True)
    class Free:
        x: float = 0.0
        xs: tuple[float, ...] = ()

        def __post_init__(self):
            config.normalise(self)

    with pytest.raises(ConfigError, match=r"^x=inf is not allowed: x must be a finite number$"):
        Free(x=float("inf"))
    with pytest.raises(ConfigError, match=r"^xs=\(1.0, nan\) is not allowed: xs must be finite numbers$"):
        config.override(Free(), {"xs": "1,nan"})


def test_describe_lists_every_field_with_type_default_and_the_validations_allowed_values():
    cfg = AuxConfig(seeds=7)
    infos = {i.name: i for i in config.describe(cfg)}
    assert list(infos) == [f.name for f in dataclasses.fields(AuxConfig)]
    assert infos["seeds"].default == 7 and infos["seeds"].type_name == "int"
    assert infos["seeds"].allowed == "an integer >= 1"
    assert infos["noise"].allowed == "one of 'uniform', 'gaussian', 'blurred', 'zeros', 'mnist'"
    assert infos["hidden"].text == "256,256" and infos["hidden"].type_name == "comma-separated list of int"
    assert infos["arms"].text == ",".join(str(a) for a in PAPER_ARMS) and infos["arms"].settable
    assert infos["seed"].allowed is None  # no constraint: nothing invented


def test_allowed_values_follow_the_validation_they_come_from(monkeypatch):
    from minisub.mlp import pipeline

    monkeypatch.setattr(pipeline, "PROJECTIONS", ("none", "trait", "orthogonal"))
    assert {i.name: i for i in config.describe(AuxConfig())}["projection"].allowed.endswith("'orthogonal'")


@dataclasses.dataclass(frozen=True)
class _World:
    s: float = 0.0  # the persona's pull
    kind: str = config.choice("persona", ("persona", "naive"))

    def __post_init__(self):
        config.normalise(self)
        config.require(0 <= self.s <= 1, "s", self.s, "in [0, 1]")


@dataclasses.dataclass(frozen=True)
class _Outer:
    seeds: int = 2
    world: _World = _World()
    inner: _Inner = _Inner()

    def __post_init__(self):
        config.normalise(self)


def test_nested_configs_are_flattened_by_field_name():
    infos = {i.name: i for i in config.describe(_Outer())}
    assert list(infos) == ["seeds", "s", "kind", "a"]
    assert infos["s"].path == ("world", "s") and infos["s"].allowed == "in [0, 1]" and infos["s"].note == "the persona's pull"
    assert infos["kind"].allowed == "one of 'persona', 'naive'"  # declared choices, checked on construction
    with pytest.raises(ConfigError, match="^kind='other' is not allowed"):
        _World(kind="other")
    changed = config.override_fields(_Outer(), {"s": "0.5", "kind": "naive", "a": "3", "seeds": "4"})
    assert changed == _Outer(seeds=4, world=_World(s=0.5, kind="naive"), inner=_Inner(a=3))
    assert config.override_fields(_Outer(), {"world.s": "0.25"}).world.s == 0.25
    with pytest.raises(ConfigError, match="^s=2.0 is not allowed"):
        config.override_fields(_Outer(), {"s": "2"})
    with pytest.raises(ConfigError, match="unknown field 'b'.*kind, s, seeds"):
        config.override_fields(_Outer(), {"b": "1"})


def test_names_two_levels_share_are_written_as_paths():
    @dataclasses.dataclass(frozen=True)
    class Twice:
        a: int = 0
        inner: _Inner = _Inner()

    assert [i.name for i in config.describe(Twice())] == ["a", "inner.a"]
    assert config.override_fields(Twice(), {"inner.a": "5"}).inner.a == 5


def test_arms_from_the_command_line_round_trip():
    text = "student_aux=shared:aux,probe=perturbed(sigma=0.3,part=hidden):aux,slow=different:all:lr=0.001:committee=2"
    cfg = config.override(AuxConfig(), {"arms": text})
    assert cfg.arms == (Arm("student_aux", "shared", "aux"), Arm("probe", "perturbed(sigma=0.3,part=hidden)", "aux"),
                        Arm("slow", "different", "all", lr=1e-3, committee=2))
    assert ",".join(map(str, cfg.arms)) == text
    for arm in (*PAPER_ARMS, Arm("x", "interpolated(alpha=0.5)", "class", lr=1e-3, liminal=0.5, committee=3)):
        assert Arm.parse(str(arm)) == arm


@pytest.mark.parametrize("text, expected", [
    ("student_aux", "NAME=LINEAGE:OUTPUTS"),
    ("a=shared:aux:speed=2", "unknown option 'speed'"),
    ("a=shared:aux:lr=fast", "lr must be a float"),
])
def test_malformed_arms_are_refused_with_the_format(text, expected):
    with pytest.raises(ConfigError) as err:
        config.override(AuxConfig(), {"arms": text})
    assert str(err.value).startswith(f"arms={text!r} is not allowed") and expected in str(err.value)


def test_an_arms_lineage_is_checked_by_the_config_and_may_come_from_outside(request):
    from minisub import lineage

    with pytest.raises(ConfigError, match="^lineage='cousin'"):
        config.override(AuxConfig(), {"arms": "a=cousin:aux"})
    # a lineage registered from outside the package: the parser only passes the text on
    lineage.register("cousin", lambda model, teacher_init, fresh, key: teacher_init)
    request.addfinalizer(lambda: lineage.unregister("cousin"))
    assert config.override(AuxConfig(), {"arms": "a=cousin:aux"}).arms == (Arm("a", "cousin", "aux"),)
