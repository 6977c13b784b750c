"""Run the mnist-aux paper preset on whatever accelerator is present and print one short table.

    python experiments/accelerator_check.py [--seeds 100] [--preset paper]

All seeds go in one block, sharded over the local devices. The table: device, seeds, wall time
(with and without compilation), achieved FLOP rate against a large matmul on the same device,
peak device memory, and the accuracy of every arm (mean ± 95% CI).
"""

from __future__ import annotations

import argparse

import jax

from minisub_experiments import mnist_aux
from minisub import config, stats
from minisub.run import bench


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper", choices=tuple(mnist_aux.PRESETS))
    p.add_argument("--seeds", type=int, default=100)
    args = p.parse_args(argv)
    cfg = config.override(mnist_aux.PRESETS[args.preset], {"seeds": str(args.seeds)})
    ceiling = bench.matmul_rate()
    m = bench.against(bench.measure(cfg), ceiling)
    rows = bench.table_rows(m)
    mem = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in mem:
        rows.append(("peak device memory", f"{mem['peak_bytes_in_use'] / 2**30:.2f} GB (device 0)"))
    for arm, values in m["results"]["accuracy"].items():
        s = stats.brief(values)
        rows.append((f"accuracy {arm}", f"{s['mean']:.3f} ± {s['ci95']:.3f} (n={s['n']})"))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


if __name__ == "__main__":
    main()
