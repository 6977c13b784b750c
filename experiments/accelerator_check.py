"""Accelerator check: mnist-aux and the lm-owl benchmark on the device present, against the CPU figures.

    python experiments/accelerator_check.py                            # paper presets: 100 seeds, 24 references
    python experiments/accelerator_check.py --preset test --seeds 2 --lm-steps 2   # a smoke test (CPU, seconds)
    python experiments/accelerator_check.py --table figures/accelerator/*.json     # the README's table, from stored runs

It runs mnist-aux (all seeds in one block, sharded over the local devices; ``bench.measure``) and
times lm-owl's pretraining (``bench.measure_lm``), both against a 4096³ float32 matmul on the same
device, then prints one table: device, matmul precision, wall time, achieved FLOP rate, peak
memory, and every arm's accuracy beside the committed CPU run (``figures/mnist_aux.json``).

The comparison, per arm: when the run's config is the committed one (the paper preset, 100 seeds),
the worlds are the same seed by seed, so it is the paired Student-t interval of the per-seed
differences (``stats.paired``); with another number of seeds (the cross arms' donors change with
it) it is Welch's two-sample Student-t interval of the difference of means (``stats.unpaired``).
"consistent" when the 95% interval contains 0; any other config is "not comparable".

Matmuls run at ``$MINISUB_MATMUL_PRECISION`` (default ``highest``: full float32, comparable with
the CPU; ``minisub.run.precision``). A machine without network needs MNIST in its cache first
(``$MINISUB_DATA_DIR``, see ``minisub.mlp.mnist``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import jax

from minisub import config, stats
from minisub.lm import owl
from minisub.mlp import pipeline
from minisub.run import bench, precision
from minisub_experiments import mnist_aux

# Relative to the working directory, like `minisub figures`: an installed package has no figures/ of its own.
COMMITTED = Path("figures") / "mnist_aux.json"
COMPARISON = ("paired Student-t interval of per-seed differences (same worlds) or Welch's two-sample "
              "Student-t interval (other seeds); 95%; consistent when it contains 0")


def committed_config(stored: dict) -> pipeline.AuxConfig:
    """The config a committed summary records (fields added since then take their defaults)."""
    return pipeline.AuxConfig(**{**stored, "arms": tuple(pipeline.Arm(**a) for a in stored["arms"])})


def comparison_mode(cfg: pipeline.AuxConfig, committed: pipeline.AuxConfig | None) -> str:
    """'paired' (the committed worlds: the same run id), 'unpaired' (the same recipe, other seeds) or 'not comparable'."""
    if committed is None:
        return "not comparable"
    if config.digest(cfg) == config.digest(committed):
        return "paired"
    same_recipe = config.digest(dataclasses.replace(cfg, seeds=committed.seeds)) == config.digest(committed)
    return "unpaired" if same_recipe else "not comparable"


def compare(values, committed: dict, mode: str) -> dict | None:
    """The difference of this run's per-seed accuracies from the committed ones, and whether it is consistent."""
    if mode == "not comparable":
        return None
    d = stats.paired(values, committed["values"]) if mode == "paired" else stats.unpaired(values, committed["values"])
    low, high = stats.interval(d)
    return {"mode": mode, "mean": d["mean"], "ci95": d["ci95"], "consistent": bool(low <= 0 <= high)}


def accuracy_rows(results: dict, committed: dict, mode: str) -> tuple[list[tuple[str, str]], dict]:
    """One row per arm: this run, the committed CPU figure, and their comparison."""
    rows, out = [], {}
    for arm, values in results["accuracy"].items():
        s = stats.brief(values)
        text = f"{s['mean']:.4f} ± {s['ci95']:.4f} (n={s['n']})"
        ref = committed.get("accuracy", {}).get(arm)
        c = compare(values, ref, mode) if ref else None
        if ref:
            text += f"   CPU {ref['mean']:.4f} ± {ref['ci95']:.4f} (n={ref['n']})"
        if c:
            verdict = "consistent" if c["consistent"] else "DIFFERS"
            text += f"   difference {c['mean']:+.4f} ± {c['ci95']:.4f} ({c['mode']}): {verdict}"
        elif ref:
            text += "   not comparable (another config)"
        rows.append((f"accuracy {arm}", text))
        out[arm] = {"run": s, "cpu": ref and {k: ref[k] for k in ("mean", "ci95", "n")}, "comparison": c}
    return rows, out


def _device_rows() -> list[tuple[str, str]]:
    mem = jax.local_devices()[0].memory_stats() or {}
    rows = [("jax", f"{jax.__version__}, matmul precision {precision.setting()!r}")]
    if "peak_bytes_in_use" in mem:
        rows.append(("peak device memory", f"{mem['peak_bytes_in_use'] / 2**30:.2f} GB (device 0)"))
    return rows


def _print(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n## {title}\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in rows), flush=True)


def check_mnist(preset: str, seeds: int, ceiling: float, committed_path: Path) -> dict:
    cfg = config.override(mnist_aux.PRESETS[preset], {"seeds": str(seeds)})
    m = bench.against(bench.measure(cfg), ceiling)
    committed = json.loads(committed_path.read_text()) if committed_path.exists() else {}
    mode = comparison_mode(cfg, committed_config(committed["config"]) if "config" in committed else None)
    acc_rows, acc = accuracy_rows(m["results"], committed, mode)
    found = "" if committed_path.exists() else f" (no committed CPU figures at {committed_path}: not comparable)"
    rows = [*bench.table_rows(m), *_device_rows(), ("comparison", COMPARISON + found), *acc_rows]
    _print(f"mnist-aux --preset {preset} --seeds {seeds}", rows)
    keep = ("seeds", "wall_s", "steady_wall_s", "flops_total", "flop_rate", "matmul_rate", "ratio", "peak_rss_gb", "epoch_s")
    return {**{k: m[k] for k in keep}, "preset": preset, "comparison_mode": mode, "accuracy": acc}


def check_lm(preset: str, seeds: int | None, steps: int, ceiling: float) -> dict:
    cfg = owl.PRESETS[preset]
    if seeds is not None:
        cfg = config.override(cfg, {"seeds": str(seeds)})
    m = bench.against(bench.measure_lm(cfg.lm_config, steps), ceiling)
    _print(f"lm-owl --preset {preset}: pretraining ({steps} steps timed)", [*bench.lm_rows(cfg.lm_config, m), *_device_rows()])
    return {k: m[k] for k in ("seeds", "step_s", "steady_wall_s", "flops_total", "flop_rate", "matmul_rate", "ratio")}


TABLE_HEAD = ("| run | device, jax | matmul precision, XLA flags | mnist-aux 100 seeds: with compilation / steady "
              "| first epoch, teacher / student (compiles) | achieved rate (share of same-process matmul) "
              "| arms consistent with the CPU run | lm-owl pretraining step, 24 references |\n"
              "|---|---|---|---|---|---|---|---|")


def table(paths: list[Path]) -> str:
    """The README's markdown table of stored checks (``--json`` outputs), one row a file, nothing recomputed."""
    rows = [TABLE_HEAD]
    for path in paths:
        d = json.loads(Path(path).read_text())
        m, lm = d["mnist_aux"], d.get("lm_owl")
        te = mnist_aux.PRESETS[m["preset"]].teacher_epochs if m.get("epoch_s") else 0
        first = f"{m['epoch_s'][0]:.1f} / {m['epoch_s'][te]:.1f} s" if te else "not recorded"
        comparisons = [a["comparison"] for a in m["accuracy"].values() if a["comparison"]]
        consistent = sum(c["consistent"] for c in comparisons)
        worst = max((abs(c["mean"]) for c in comparisons), default=float("nan"))
        step = f"{lm['step_s'] * 1e3:.2f} ms ({lm['ratio']:.1%})" if lm else "not run"
        rows.append(f"| `{Path(path).name}` | {d['device']}, jax {d['jax']} | `{d['matmul_precision']}`, "
                    f"{('`' + d['xla_flags'] + '`') if d.get('xla_flags') else 'none'} | {m['wall_s']:.1f} s / "
                    f"{m['steady_wall_s']:.1f} s | {first} | {m['flop_rate'] / 1e12:.1f} TFLOP/s ({m['ratio']:.0%}) | "
                    f"{consistent} of {len(comparisons)} ({m['comparison_mode']}; largest difference "
                    f"{worst:.4f}) | {step} |")
    return "\n".join(rows + ["", *reading([json.loads(Path(p).read_text()) for p in paths])])


def reading(runs: list[dict], target_s: float = 30.0) -> list[str]:
    """What the stored checks say, one sentence per setting, each computed from their numbers."""
    lines = []
    for (prec, flags), group in _groups(runs).items():
        ms = [r["mnist_aux"] for r in group]
        cs = [a["comparison"] for m in ms for a in m["accuracy"].values() if a["comparison"]]
        within = sum(c["consistent"] for c in cs)
        steady, wall = [m["steady_wall_s"] for m in ms], [m["wall_s"] for m in ms]
        lines.append(
            f"- `{prec}`{', ' + flags if flags else ''} ({len(ms)} run{'s' * (len(ms) > 1)}): {within} of {len(cs)} arm "
            f"comparisons contain 0 in their paired 95% interval against the CPU run (half-widths up to "
            f"{max(c['ci95'] for c in cs):.4f}); {ms[0]['seeds']} seeds in {_span(steady)} s steady "
            f"({'under' if max(steady) < target_s else 'not under'} {target_s:.0f} s), {_span(wall)} s "
            f"with compilation ({'under' if max(wall) < target_s else 'not under'} {target_s:.0f} s).")
    return lines


def _span(values: list[float]) -> str:
    lo, hi = f"{min(values):.1f}", f"{max(values):.1f}"
    return lo if lo == hi else f"{lo}–{hi}"


def _groups(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["matmul_precision"], r.get("xla_flags", "")), []).append(r)
    return groups


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper", choices=tuple(mnist_aux.PRESETS), help="mnist-aux's preset")
    p.add_argument("--seeds", type=int, default=100, help="mnist-aux seeds, all in one block")
    p.add_argument("--lm-preset", choices=tuple(owl.PRESETS), help="lm-owl's preset (default: --preset's name)")
    p.add_argument("--lm-seeds", type=int, help="lm-owl references (default: the preset's)")
    p.add_argument("--lm-steps", type=int, default=50, help="pretraining steps timed (after a compiled first chunk)")
    p.add_argument("--no-lm", action="store_true", help="skip the lm-owl benchmark")
    p.add_argument("--committed", type=Path, default=COMMITTED, help="the CPU figures compared against")
    p.add_argument("--json", type=Path, help="also write the table's numbers here")
    p.add_argument("--table", type=Path, nargs="+", help="print the markdown table of these stored --json files, run nothing")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.table))
        return {}
    with precision.applied():
        ceiling = bench.matmul_rate()
        out = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
               "devices": jax.device_count(), "jax": jax.__version__, "matmul_precision": precision.setting(),
               "xla_flags": os.environ.get("XLA_FLAGS", ""),
               "comparison": COMPARISON, "mnist_aux": check_mnist(args.preset, args.seeds, ceiling, args.committed)}
        if not args.no_lm:
            lm_preset = args.lm_preset or (args.preset if args.preset in owl.PRESETS else "paper")
            out["lm_owl"] = check_lm(lm_preset, args.lm_seeds, args.lm_steps, ceiling)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
