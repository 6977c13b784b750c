"""The CPU-bounds benchmark: the README's block renders the committed measurement; the table reads its runs right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import readme_block
from minisub_experiments import lm_cpu_bounds as bounds

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "figures" / "speed" / "cpu_bounds.json"


def test_the_readme_block_is_the_rendering_of_the_committed_measurement():
    result = json.loads(COMMITTED.read_text())
    assert [v["name"] for v in result["variants"]] == [v.name for v in bounds.VARIANTS]
    assert all(len(v["runs"]) == result["repeats"] for v in result["variants"])
    assert readme_block("lm-cpu-bounds") == bounds.table(result)


def _result(steps_ms: dict[str, list[float]], digests: dict[str, list[str]]) -> dict:
    variants = [{"name": name, "xla_flags": "", "runs": [{"step_s": s / 1e3, "compile_s": 2.0, "loss_digest": d}
                                                        for s, d in zip(steps_ms[name], digests[name])]}
                for name in steps_ms]
    return {"seeds": 24, "repeats": 3, "variants": variants}


def test_the_table_gives_medians_ratios_and_whether_the_bits_are_fast_s():
    steps = {"reference": [120.0, 100.0, 140.0], "fast": [60.0, 50.0, 90.0], "flagged": [40.0, 55.0, 50.0],
             "split": [30.0, 20.0, 60.0]}  # 30 ms less than fast in every round
    digests = {"reference": ["r"] * 3, "fast": ["f"] * 3, "flagged": ["f"] * 3, "split": [""] * 3}
    text = bounds.table(_result(steps, digests)).splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text[2:] if line.startswith("| ")}
    assert rows["reference"][2] == "120.0 ms (100.0–140.0)" and rows["reference"][3] == "1.00x"
    assert rows["fast"][2] == "60.0 ms (50.0–90.0)" and rows["fast"][3] == "2.00x" and rows["fast"][5] == "— |"
    assert rows["flagged"][3] == "2.40x" and rows["flagged"][5] == "yes |"
    assert rows["reference"][5] == "no |"
    assert rows["split"][3] == "4.00x" and rows["split"][5] == "— |"  # other worlds: no digest to compare
    said = {line.split(":")[0][2:]: line for line in text if line.startswith("- ")}
    assert said["split"].endswith("-30.0 ± 0.0 ms a step against 'fast' (paired over rounds, n = 3): faster than 'fast'.")
    assert said["reference"].endswith("slower than 'fast'.")  # +60, +50, +50
    assert said["flagged"].endswith("not distinguishable from 'fast'.")  # -20, +5, -40: the interval holds 0
    assert "fast" not in said
    assert text[-1] == "- Faster than 'fast' (95% paired interval below 0): split."


@pytest.mark.parametrize("argv, field", [(["--seeds", "3"], "seeds"), (["--seeds", "2"], "seeds"),
                                         (["--steps", "0"], "steps"), (["--repeats", "1"], "repeats")])
def test_bad_input_is_refused_before_anything_runs(argv, field, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bounds.main(["--out", str(tmp_path / "x.json"), *argv])
    assert e.value.code == 2 and f"--{field}=" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
