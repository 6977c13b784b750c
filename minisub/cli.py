"""Command line: ``minisub run|figures|list|bench``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from minisub.config import ConfigError, override

FIGURES = Path("figures")


def _experiment(name: str):
    from experiments import EXPERIMENTS

    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}: allowed experiments are {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def _overrides(extra: list[str]) -> dict[str, str]:
    """``--field value``, ``--field=value`` or ``field=value`` pairs from the leftover arguments."""
    out, rest = {}, list(extra)
    while rest:
        arg = rest.pop(0)
        if "=" in arg:
            k, v = arg.split("=", 1)
        elif arg.startswith("--") and rest:
            k, v = arg, rest.pop(0)
        else:
            raise ConfigError(f"cannot read argument {arg!r}: give config fields as --field VALUE or field=VALUE")
        out[k.lstrip("-")] = v
    return out


def build_config(module, preset: str, extra: list[str]):
    """The preset named ``preset`` with command-line overrides applied and validated."""
    if preset not in module.PRESETS:
        raise ConfigError(f"preset={preset!r} is not allowed: preset must be one of {', '.join(module.PRESETS)}")
    return override(module.PRESETS[preset], _overrides(extra))


def cmd_run(args, extra) -> int:
    module = _experiment(args.experiment)
    cfg = build_config(module, args.preset, extra)  # every error is raised here, before any compute
    command = "minisub " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary, directory = module.run(cfg, command=command, force=args.force, progress=not args.no_progress)
    paths = module.write_outputs(summary, Path(args.out) if args.out else directory)
    print(module.table(summary))
    print(f"\nresults: {directory}")
    print("figure:  " + ", ".join(str(p) for p in paths))
    return 0


def cmd_figures(args, extra) -> int:
    from experiments import EXPERIMENTS

    names = [args.experiment] if args.experiment else list(EXPERIMENTS)
    for name in names:
        module = _experiment(name)
        source = Path(args.dir) / f"{module.STEM}.json"
        if not source.exists():
            print(f"{name}: no {source}; produce it with: minisub run {name} --preset paper --out {args.dir}")
            continue
        summary = json.loads(source.read_text())
        paths = module.figure(summary, Path(args.dir))
        print(f"{name}: redrew " + ", ".join(str(p) for p in paths) + f" from {source}")
    return 0


def cmd_list(args, extra) -> int:
    from experiments import EXPERIMENTS

    for name, module in EXPERIMENTS.items():
        print(f"{name}: {(module.__doc__ or '').splitlines()[0]}")
        for preset, cfg in module.PRESETS.items():
            mark = " (default)" if preset == module.DEFAULT_PRESET else ""
            print(f"  --preset {preset}{mark}: seeds={cfg.seeds}")
    return 0


def cmd_bench(args, extra) -> int:
    from minisub import bench

    module = _experiment(args.experiment)
    cfg = build_config(module, args.preset, ["--seeds", str(args.seeds), "--seeds_per_block", str(args.seeds), *extra])
    bench.report(cfg)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minisub", description="A JAX laboratory for subliminal learning.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run an experiment (served from the results store when already done)")
    r.add_argument("experiment")
    r.add_argument("--preset", default="quick")
    r.add_argument("--force", action="store_true", help="recompute even if stored")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--out", help="where the figure and its JSON go (default: the run directory)")
    r.set_defaults(fn=cmd_run)
    f = sub.add_parser("figures", help="redraw figures from their committed JSON, without training")
    f.add_argument("experiment", nargs="?")
    f.add_argument("--dir", default=str(FIGURES))
    f.set_defaults(fn=cmd_figures)
    ls = sub.add_parser("list", help="list experiments and presets")
    ls.set_defaults(fn=cmd_list)
    b = sub.add_parser("bench", help="seeds/s, FLOP rate against a large matmul, peak memory")
    b.add_argument("experiment")
    b.add_argument("--preset", default="paper")
    b.add_argument("--seeds", type=int, default=16)
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args, extra = parser().parse_known_args(argv)
    if extra and args.command != "run" and args.command != "bench":
        print(f"minisub {args.command}: unexpected arguments {' '.join(extra)}", file=sys.stderr)
        return 2
    try:
        return args.fn(args, extra)
    except ConfigError as e:
        print(f"minisub: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
