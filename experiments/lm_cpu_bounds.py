"""What bounds the toy LM's pretraining step on a CPU: XLA settings and process layouts, timed in turns.

    python experiments/lm_cpu_bounds.py --out figures/speed/cpu_bounds.json   # measures (~8 min on 2 cores)
    python experiments/lm_cpu_bounds.py --table figures/speed/cpu_bounds.json  # the README's block

Each variant times ``bench.measure_lm`` (lm-owl's paper preset: 24 references, ``--steps`` steps after
a first, compiling call) in a process of its own, because XLA's flags and the device count are
fixed when a process starts. The variants take turns for ``--repeats`` rounds, so the machine's
drift (±10% over minutes on the 2-core machine) falls on all of them alike; the table gives the
median and the range. *compile* is the first call's time less the steady call's (it compiles, then
runs as many steps). A variant that changes no arithmetic gives the same losses bit for bit as
'fast' (the last column compares the steady call's loss array).

The split variant runs two processes at once, each pinned to one core with one device and half
the references (other worlds of the same size: the time does not depend on the values); its step
is the slower process's. It asks whether the two devices of one process get in each other's way.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from minisub import stats


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    kernels: str = "fast"
    xla_flags: str = ""  # appended to the caller's XLA_FLAGS
    devices: int = 0  # JAX_NUM_CPU_DEVICES (0: what the CLI gives the kernels: one per core under 'fast')
    processes: int = 1  # > 1: that many processes at once, each pinned to a core with 1/processes of the worlds


VARIANTS = (
    Variant("reference", kernels="reference"),
    Variant("fast"),
    Variant("fast, one device", devices=1),
    Variant("fast, no YNN fusions, single-threaded Eigen",
            xla_flags="--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_multi_thread_eigen=false"),
    Variant("fast, LLVM -O1", xla_flags="--xla_backend_optimization_level=1"),
    Variant("fast, two processes, one core each", devices=1, processes=2),
)


def worker(kernels: str, seeds: int, steps: int) -> dict:
    """One measurement in this process (its environment already set): step and compile seconds, loss digest."""
    # Imported here, not at the top: the parent process only launches workers and renders tables.
    from minisub.run import parallel

    if kernels == "fast":
        parallel.one_device_per_core()  # as the CLI does; an explicit JAX_NUM_CPU_DEVICES wins
    import jax

    from minisub.lm import owl
    from minisub.run import bench

    m = bench.measure_lm(dataclasses.replace(owl.PRESETS["paper"].lm, seeds=seeds, kernels=kernels), steps)
    steady = m["step_s"] * steps  # wall_s = the first call (compile + as many steps) + the steady call
    return {"step_s": m["step_s"], "compile_s": m["wall_s"] - 2 * steady, "loss_digest": m["loss_digest"],
            "devices": jax.local_device_count()}


def _launch(v: Variant, seeds: int, steps: int) -> dict:
    """``v`` measured in fresh processes: step = the slowest process's, compile = the slowest's."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {v.xla_flags}".strip()
    if v.devices:
        env["JAX_NUM_CPU_DEVICES"] = str(v.devices)
    cores = sorted(os.sched_getaffinity(0))
    cmd = [sys.executable, __file__, "--worker", v.kernels, str(seeds // v.processes), str(steps)]
    procs = []
    for i in range(v.processes):
        pin = (lambda c=cores[i % len(cores)]: os.sched_setaffinity(0, {c})) if v.processes > 1 else None
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, preexec_fn=pin, text=True))
    outs = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise RuntimeError(f"variant {v.name!r}: a measuring process exited with {p.returncode}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return {"step_s": max(o["step_s"] for o in outs), "compile_s": max(o["compile_s"] for o in outs),
            "loss_digest": outs[0]["loss_digest"] if v.processes == 1 else "", "devices": outs[0]["devices"]}


def measure(seeds: int = 24, steps: int = 30, repeats: int = 3, log=print) -> dict:
    """Every variant, ``repeats`` rounds in turns; the figures the table shows."""
    runs = {v.name: [] for v in VARIANTS}
    for r in range(repeats):
        for v in VARIANTS:
            runs[v.name].append(_launch(v, seeds, steps))
            log(f"round {r + 1}/{repeats}  {v.name:45s} {1e3 * runs[v.name][-1]['step_s']:7.1f} ms a step")
    return {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
            "seeds": seeds, "steps": steps, "repeats": repeats,
            "variants": [dict(dataclasses.asdict(v), runs=runs[v.name]) for v in VARIANTS]}


def table(result: dict) -> str:
    """The README's block: median step (range), its ratio to the reference's median, compile, same bits as 'fast'."""
    med = {v["name"]: statistics.median(r["step_s"] for r in v["runs"]) for v in result["variants"]}
    digest = {v["name"]: {r["loss_digest"] for r in v["runs"]} for v in result["variants"]}
    lines = [f"| variant ({result['seeds']} references, {result['repeats']} rounds in turns) | XLA flags added | "
             "step, median (range) | reference ÷ variant | compile, median | losses bitwise those of 'fast' |",
             "|---|---|---|---|---|---|"]
    for v in result["variants"]:
        steps = sorted(1e3 * r["step_s"] for r in v["runs"])
        same = "—" if v["name"] == "fast" or not all(digest[v["name"]]) else (
            "yes" if digest[v["name"]] == digest["fast"] else "no")
        lines.append(f"| {v['name']} | {'`' + v['xla_flags'] + '`' if v['xla_flags'] else ''} | "
                     f"{statistics.median(steps):.1f} ms ({steps[0]:.1f}–{steps[-1]:.1f}) | "
                     f"{med['reference'] / med[v['name']]:.2f}x | "
                     f"{statistics.median(r['compile_s'] for r in v['runs']):.1f} s | {same} |")
    return "\n".join(lines + ["", *reading(result)])


def reading(result: dict) -> list[str]:
    """Each variant against 'fast', round by round (paired Student-t over the rounds, n = repeats)."""
    steps = {v["name"]: [1e3 * r["step_s"] for r in v["runs"]] for v in result["variants"]}
    lines, faster = [], []
    for name, ms in steps.items():
        if name == "fast":
            continue
        d = stats.paired(ms, steps["fast"])
        low, high = stats.interval(d)
        word = "slower than" if low > 0 else "faster than" if high < 0 else "not distinguishable from"
        lines.append(f"- {name}: {d['mean']:+.1f} ± {d['ci95']:.1f} ms a step against 'fast' (paired over "
                     f"rounds, n = {d['n']}): {word} 'fast'.")
        if word == "faster than":
            faster.append(name)
    return lines + [f"- Faster than 'fast' (95% paired interval below 0): {', '.join(faster) or 'none'}."]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="measure every variant and write the result here (JSON)")
    p.add_argument("--table", type=Path, help="print the README's block from a stored result")
    p.add_argument("--seeds", type=int, default=24)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3, help="rounds, every variant once each, in turns")
    p.add_argument("--worker", nargs=3, metavar=("KERNELS", "SEEDS", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        kernels, seeds, steps = args.worker
        print(json.dumps(worker(kernels, int(seeds), int(steps))))
        return 0
    if not (args.out or args.table):
        p.error("give --out FILE (measure) or --table FILE (render)")
    checks = (("seeds", args.seeds >= 4 and args.seeds % 2 == 0, "an even integer >= 4 (the split gives each of "
                                                                  "its two processes half, and a world needs 2)"),
              ("steps", args.steps >= 1, "an integer >= 1"),
              ("repeats", args.repeats >= 2, "an integer >= 2 (a paired interval needs two rounds)"))
    for name, ok, allowed in checks:
        if not ok:
            p.error(f"--{name}={getattr(args, name)} is not allowed: {name} must be {allowed}")
    if args.out:
        result = measure(args.seeds, args.steps, args.repeats)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(table(result))
    if args.table:
        print(table(json.loads(args.table.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
