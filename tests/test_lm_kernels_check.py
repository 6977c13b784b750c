"""The fast-kernels check: the README's block is its rendering of the committed runs, and its reading follows the numbers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from helpers import readme_block
from minisub_experiments import lm_kernels_check as check
from minisub_experiments import lm_owl

ROOT = Path(__file__).resolve().parent.parent
REFERENCE, FAST = ROOT / "figures" / "lm_owl.json", ROOT / "figures" / "speed" / "fast" / "lm_owl.json"


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_readme_blocks_are_the_renderings_of_the_committed_runs():
    assert readme_block("lm-kernels-table") == check.table(_load(REFERENCE), _load(FAST))
    rerun = _load(ROOT / "figures" / "speed" / "rerun" / "lm_owl.json")
    assert readme_block("lm-rerun-table") == check.table(_load(REFERENCE), rerun, ("committed", "rerun"))


def test_the_committed_fast_run_is_an_lm_owl_summary_of_the_fast_kernels():
    fast = _load(FAST)
    assert fast["config"]["kernels"] == "fast" and fast["config"]["sampler"] == "cache"
    assert {k: v for k, v in fast["config"].items() if k not in ("kernels", "sampler")} == _load(REFERENCE)["config"]
    assert json.loads(json.dumps(lm_owl.analyse(copy.deepcopy(fast)))) == fast  # numbers and verdicts as computed now


def _shifted(summary: dict, arm: str, by: float) -> dict:
    out = copy.deepcopy(summary)
    gain = out["arms"][arm]["trait_gain"]
    gain["values"] = [v + by for v in gain["values"]]
    gain["mean"] += by
    return out


def test_the_reading_follows_the_numbers():
    reference = _load(REFERENCE)
    same = check.reading(reference, reference)
    assert same[0].startswith("- 19 of 19 paired 95% intervals") and "; not:" not in same[0]
    assert same[2] == "- 8 of 8 claims reach the same verdict."
    moved = _shifted(reference, "shared", 0.5)  # far outside every interval
    moved["verdicts"] = [dict(v, status="refuted") if v["id"] == "shared_gains" else v for v in moved["verdicts"]]
    text = check.reading(reference, moved)
    assert "18 of 19 paired" in text[0] and "not: trait gain, shared" in text[0]
    assert "outside: trait gain, shared" in text[1]
    assert "different: shared_gains (supported → refuted)" in text[2]
    nudged = _shifted(reference, "shared", 1e-4)  # a constant shift: the paired interval is [1e-4, 1e-4]
    rows = {r["label"]: r for r in check.compare(reference, nudged)}
    assert rows["trait gain, shared"]["inside"] and not rows["trait gain, shared"]["paired_contains_0"]
