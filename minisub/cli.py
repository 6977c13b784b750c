"""Command line: ``minisub run|merge|figures|report|list|bench``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from minisub.config import ConfigError, override
from minisub.mlp.mnist import MnistUnavailable

FIGURES = Path("figures")


def _experiment(name: str):
    from minisub import registry

    return registry.experiment(name)


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
    preset = preset or module.DEFAULT_PRESET
    if preset not in module.PRESETS:
        raise ConfigError(f"preset={preset!r} is not allowed: preset must be one of {', '.join(module.PRESETS)}")
    return override(module.PRESETS[preset], _overrides(extra))


def _shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return (0, 1)
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ConfigError(f"shard={text!r} is not allowed: shard must be i/n with 0 <= i < n") from None
    return (i, n)


def _execution(args, module, compute: bool = True):
    from minisub.run.runner import Execution

    return Execution(block=args.block, memory_budget_gb=args.memory_budget, shard=_shard(args.shard),
                     on_nonfinite=args.on_nonfinite, force=getattr(args, "force", False),
                     progress=not args.no_progress, compute=compute, experiment=module.NAME)


def _run(args, extra, compute: bool) -> int:
    module = _experiment(args.experiment)
    args.preset = args.preset or module.DEFAULT_PRESET
    cfg = build_config(module, args.preset, extra)  # every error is raised here, before any compute
    execution = _execution(args, module, compute)
    if args.coordinator or args.num_processes:
        from minisub.run import parallel

        parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    # What recomputes the result: the experiment, preset and config overrides (execution flags
    # such as --block, --shard or --out change where and how, never what).
    command = f"minisub run {module.NAME} --preset {args.preset} " + " ".join(shlex.quote(a) for a in extra)
    summary, directory = module.run(cfg, command=command.strip(), execution=execution)
    if summary is None and hasattr(module, "pending"):
        print(module.pending(cfg, directory))
        return 0 if compute else 1
    if summary is None:
        from minisub.run.runner import missing_seeds

        missing = missing_seeds(cfg, directory)
        print(f"{module.NAME}: this process is done; {len(missing)} seeds are still missing in {directory} "
              f"(other shards). When all shards finish: minisub merge {module.NAME} --preset {args.preset} "
              + " ".join(shlex.quote(a) for a in extra))
        return 0 if compute else 1
    from minisub.run import parallel

    if not parallel.is_writer():
        return 0
    from minisub import report

    out = Path(args.out) if args.out else directory
    paths = module.write_outputs(summary, out) if hasattr(module, "write_outputs") else report.write_outputs(module, summary, out)
    print(module.table(summary))
    print(f"\nresults: {directory}")
    print("figure:  " + ", ".join(str(p) for p in paths))
    return 0


def cmd_run(args, extra) -> int:
    return _run(args, extra, compute=True)


def cmd_merge(args, extra) -> int:
    return _run(args, extra, compute=False)


def cmd_figures(args, extra) -> int:
    from minisub import registry

    names = [args.experiment] if args.experiment else list(registry.experiments())
    for name in names:
        module = _experiment(name)
        source = Path(args.dir) / f"{module.STEM}.json"
        if not source.exists():
            print(f"{name}: no {source}; produce it with: {module.PAPER_COMMAND}")
            continue
        from minisub import report

        paths = report.draw(module, json.loads(source.read_text()), Path(args.dir))
        print(f"{name}: redrew " + ", ".join(str(p) for p in paths) + f" from {source}")
    return 0


def cmd_report(args, extra) -> int:
    from minisub.report import report

    written, missing = report(Path(args.dir))
    print("wrote " + ", ".join(str(p) for p in written))
    for line in missing:
        print("missing: " + line)
    return 0


def cmd_list(args, extra) -> int:
    from minisub import registry

    for name, module in registry.experiments().items():
        print((module.__doc__ or name).splitlines()[0])
        for preset, cfg in module.PRESETS.items():
            mark = " (default)" if preset == module.DEFAULT_PRESET else ""
            print(f"  --preset {preset}{mark}: seeds={cfg.seeds}")
    return 0


def cmd_bench(args, extra) -> int:
    from minisub.run import bench

    module = _experiment(args.experiment)
    cfg = build_config(module, args.preset, ["--seeds", str(args.seeds), *extra])
    if hasattr(cfg, "lm_config"):  # a toy-LM experiment: pretraining is the bulk of its compute
        bench.report_lm(cfg.lm_config, args.steps)
    else:
        bench.report(cfg)
    return 0


def _run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment")
    p.add_argument("--preset", help="a preset of the experiment (default: its DEFAULT_PRESET)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", help="where the figure and its JSON go (default: the run directory)")
    p.add_argument("--block", type=int, help="seeds per block (a stored, resumable piece)")
    p.add_argument("--memory-budget", type=float, help="GB: choose the block size to fit this memory")
    p.add_argument("--shard", help="i/n: compute every n-th block starting at i (independent processes)")
    p.add_argument("--on-nonfinite", default="raise", help="raise (default) or mark: flag the seed and go on")
    p.add_argument("--coordinator", help="host:port of process 0, for a multi-host run (jax.distributed)")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minisub", description="A JAX laboratory for subliminal learning.")
    sub = p.add_subparsers(dest="command", required=True)
    # allow_abbrev=False: a config field that is a prefix of a flag (lm-owl's --s, of --shard) must
    # reach the config, not the flag.
    r = sub.add_parser("run", help="run an experiment (served from the results store when already done)",
                       allow_abbrev=False)
    _run_flags(r)
    r.add_argument("--force", action="store_true", help="recompute even if stored")
    r.set_defaults(fn=cmd_run)
    m = sub.add_parser("merge", help="assemble the pieces written by --shard processes, computing nothing",
                       allow_abbrev=False)
    _run_flags(m)
    m.set_defaults(fn=cmd_merge)
    f = sub.add_parser("figures", help="redraw figures from their committed JSON, without training")
    f.add_argument("experiment", nargs="?")
    f.add_argument("--dir", default=str(FIGURES))
    f.set_defaults(fn=cmd_figures)
    rep = sub.add_parser("report", help="redraw every figure and figures/README.md; list what is missing")
    rep.add_argument("--dir", default=str(FIGURES))
    rep.set_defaults(fn=cmd_report)
    ls = sub.add_parser("list", help="list experiments and presets")
    ls.set_defaults(fn=cmd_list)
    b = sub.add_parser("bench", help="seeds/s, FLOP rate against a large matmul, peak memory", allow_abbrev=False)
    b.add_argument("experiment")
    b.add_argument("--preset", default="paper")
    b.add_argument("--seeds", type=int, default=16)
    b.add_argument("--steps", type=int, default=50, help="toy-LM experiments: pretraining steps timed")
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser().parse_known_args(argv)
    args.argv = argv
    if extra and args.command not in ("run", "merge", "bench"):
        print(f"minisub {args.command}: unexpected arguments {' '.join(extra)}", file=sys.stderr)
        return 2
    try:
        return args.fn(args, extra)
    except ConfigError as e:
        print(f"minisub: error: {e}", file=sys.stderr)
        return 2
    except MnistUnavailable as e:
        print(f"minisub: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
