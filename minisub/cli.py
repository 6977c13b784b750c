"""Command line: ``minisub run|merge|figures|report|list|runs|export|bench|audit``.

``minisub run EXPERIMENT --help`` lists every config field of that experiment (type, the preset's
value, allowed values), generated from its config dataclass. Options may come before or after
the experiment's name. Every error is one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

from minisub.config import ConfigError
from minisub.mlp.mnist import MnistUnavailable

FIGURES = Path("figures")
WITH_EXPERIMENT = ("run", "merge", "sweep", "bench")  # subcommands whose first positional is an experiment
EXPORT_FORMATS = ("csv", "parquet")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``minisub: error: ...``) and exit status 2."""

    def error(self, message):
        where = self.prog.removeprefix("minisub").strip()
        sys.stderr.write(f"minisub: error: {where + ': ' if where else ''}{message}\n")
        sys.exit(2)


_HISTORY = re.compile(r"\s*\((?:issue|item)s? [^)]*\)|^(?:issue|item)s? [\d/, ]+:\s*", re.I)


def _plain(text: str) -> str:
    """Help text without development history: '(issue 6, item 7)', a leading 'item 6:'."""
    return _HISTORY.sub("", text).strip()


def _experiment(name: str):
    from minisub import registry

    return registry.experiment(name)


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("minisub")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover -- run from a bare checkout
        return "unknown"


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


def build_config(module, preset: str | None, overrides: dict[str, str] | list[str]):
    """The preset named ``preset`` with command-line overrides applied and validated."""
    from minisub.config import override_fields

    preset = preset or module.DEFAULT_PRESET
    if preset not in module.PRESETS:
        raise ConfigError(f"preset={preset!r} is not allowed: preset must be one of {', '.join(module.PRESETS)}")
    if isinstance(overrides, list):
        overrides = _overrides(overrides)
    return override_fields(module.PRESETS[preset], overrides)


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
                     progress=not args.no_progress, compute=compute, experiment=module.NAME,
                     keep_params=getattr(args, "keep_params", False))


def _field_overrides(args, extra: list[str]) -> dict[str, str]:
    """Config fields given as flags (``--seeds 20``) and as leftovers (``seeds=20``), in that order."""
    given = {k[len(_FIELD):]: v for k, v in vars(args).items() if k.startswith(_FIELD)}
    return {**given, **_overrides(extra)}


def _command(module, preset: str, overrides: dict[str, str], verb: str = "run") -> str:
    """What recomputes the result: the experiment, preset and config overrides (execution flags
    such as --block, --shard or --out change where and how, never what)."""
    fields = " ".join(f"--{k} {shlex.quote(v)}" for k, v in overrides.items())
    return f"minisub {verb} {module.NAME} --preset {preset} {fields}".strip()


def _print_config(module, preset: str, cfg) -> int:
    from minisub import config as config_lib
    from minisub.run import store

    print(json.dumps({"experiment": module.NAME, "preset": preset, "run_id": config_lib.digest(cfg),
                      "run_dir": str(store.run_dir(module.NAME, cfg)), "config": config_lib.to_dict(cfg)}, indent=1))
    return 0


def _run(args, extra, compute: bool) -> int:
    module = _experiment(args.experiment)
    args.preset = args.preset or module.DEFAULT_PRESET
    overrides = _field_overrides(args, extra)
    cfg = build_config(module, args.preset, overrides)  # every error is raised here, before any compute
    if getattr(args, "print_config", False):
        return _print_config(module, args.preset, cfg)
    if getattr(args, "keep_params", False):
        _check_keep_params(module, cfg, args)
    execution = _execution(args, module, compute)
    if args.coordinator or args.num_processes:
        from minisub.run import parallel

        parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    else:
        _devices_for(cfg)
    summary, directory = module.run(cfg, command=_command(module, args.preset, overrides), execution=execution)
    if summary is None and hasattr(module, "pending"):
        print(module.pending(cfg, directory))
        return 0 if compute else 1
    if summary is None:
        from minisub.run.runner import missing_seeds

        missing = missing_seeds(cfg, directory)
        print(f"{module.NAME}: this process is done; {len(missing)} seeds are still missing in {directory} "
              f"(other shards). When all shards finish: {_command(module, args.preset, overrides, 'merge')}")
        return 0 if compute else 1
    from minisub.run import parallel

    if not parallel.is_writer():
        return 0
    from minisub import report

    out = Path(args.out) if args.out else directory
    paths = report.write_outputs(module, summary, out)
    print(module.table(summary))
    print(f"\nresults: {directory}")
    print("figure:  " + ", ".join(str(p) for p in paths))
    if getattr(args, "keep_params", False):
        print(f"params:  {directory / 'params'} (minisub.run.params.load)")
    return 0


def _check_keep_params(module, cfg, args) -> None:
    """--keep-params: only for runs through the population runner; a stored run without params recomputes."""
    from minisub.mlp.pipeline import AuxConfig
    from minisub.run import params, store

    if not isinstance(cfg, AuxConfig):
        raise ConfigError(f"keep_params is not allowed for {module.NAME}: keep_params needs an experiment run by "
                          "minisub.run.runner (mnist-aux)")
    if not params.complete(store.run_dir(module.NAME, cfg), cfg.seeds):
        args.force = True  # the same numbers again, now with their weights


def cmd_run(args, extra) -> int:
    return _run(args, extra, compute=True)


def cmd_sweep(args, extra) -> int:
    """Sweep config fields given with several values (minisub.cli_sweep); every point validated first."""
    from minisub import cli_sweep
    from minisub.mlp import mnist

    module = _experiment(args.experiment)
    args.preset = args.preset or module.DEFAULT_PRESET
    overrides = _field_overrides(args, extra)
    if args.preset not in module.PRESETS:
        raise ConfigError(f"preset={args.preset!r} is not allowed: preset must be one of {', '.join(module.PRESETS)}")
    fixed, axes = cli_sweep.split_values(module.PRESETS[args.preset], overrides)
    base = build_config(module, args.preset, fixed)
    grid = cli_sweep.combinations(base, axes)  # every point's config validated before any compute
    for _, point in grid:
        _devices_for(point)
    if args.print_config:
        from minisub import config as config_lib

        print(json.dumps({"experiment": module.NAME, "base": config_lib.to_dict(base), "axes": axes,
                          "run_ids": {json.dumps(t): config_lib.digest(c) for t, c in grid}}, indent=1))
        return 0
    summary, directory = cli_sweep.run(module, base, axes, _execution(args, module),
                                       _command(module, args.preset, overrides, "sweep"), loader=mnist.load_cached)
    paths = cli_sweep.write(summary, Path(args.out) if args.out else directory)
    print(cli_sweep.table(summary))
    print("\nsweep:  " + ", ".join(str(p) for p in paths))
    return 0


def cmd_merge(args, extra) -> int:
    return _run(args, extra, compute=False)


def cmd_figures(args, extra) -> int:
    from minisub import registry

    names = [args.experiment] if args.experiment else list(registry.experiments())
    missing = []
    for name in names:
        module = _experiment(name)
        source = Path(args.dir) / f"{module.STEM}.json"
        if not source.exists():
            print(f"{name}: no {source}; produce it with: {module.PAPER_COMMAND}")
            missing.append(name)
            continue
        from minisub import report

        paths = report.draw(module, json.loads(source.read_text()), Path(args.dir))
        print(f"{name}: redrew " + ", ".join(str(p) for p in paths) + f" from {source}")
    if missing:
        raise _Missing(f"no JSON in {args.dir} for {', '.join(missing)} (how to produce each is printed above)")
    return 0


class _Missing(Exception):
    """A result the command needs is not there: one line, exit status 1."""


def cmd_report(args, extra) -> int:
    from minisub.report import report

    written, missing = report(Path(args.dir))
    print("wrote " + ", ".join(str(p) for p in written))
    for line in missing:
        print("missing: " + line)
    if missing:
        raise _Missing(f"{len(missing)} experiments have no JSON in {args.dir} (listed above with their commands)")
    return 0


def cmd_list(args, extra) -> int:
    from minisub import registry

    for name, module in registry.experiments().items():
        print(_plain((module.__doc__ or name).splitlines()[0]))
        for preset, cfg in module.PRESETS.items():
            mark = " (default)" if preset == module.DEFAULT_PRESET else ""
            print(f"  --preset {preset}{mark}: seeds={cfg.seeds}")
    return 0


def cmd_runs(args, extra) -> int:
    from minisub.run import export

    if args.experiment:
        _experiment(args.experiment)  # an unknown name is an error, not an empty listing
    rows = export.runs(args.experiment)
    if not rows:
        print(f"no stored runs under {export.store.results_root()}" + (f" for {args.experiment}" if args.experiment else ""))
        return 0
    print(export.format_runs(rows))
    return 0


def cmd_export(args, extra) -> int:
    from minisub.run import export

    path = export.write(args.what, args.format, Path(args.out) if args.out else None)
    print(f"wrote {path}")
    return 0


def _devices_for(cfg) -> None:
    """'fast' toy-LM kernels spread the worlds over devices: one CPU device per core (``parallel``)."""
    from minisub import config as config_lib

    if config_lib.to_dict(cfg).get("kernels") == "fast":
        from minisub.run import parallel

        parallel.one_device_per_core()


def cmd_bench(args, extra) -> int:
    from minisub.run import bench

    module = _experiment(args.experiment)
    cfg = build_config(module, args.preset, ["--seeds", str(args.seeds), *extra])
    baseline = None
    if args.against:  # the same config with these fields changed, every error before any compute
        pairs = args.against.split(",")
        if not all("=" in p for p in pairs):
            raise ConfigError(f"against={args.against!r} is not allowed: against must be FIELD=VALUE[,FIELD=VALUE]")
        baseline = build_config(module, args.preset, ["--seeds", str(args.seeds), *extra, *pairs])
        if not hasattr(cfg, "lm_config"):
            raise ConfigError(f"against={args.against!r} is not allowed: --against times toy-LM experiments only")
    _devices_for(cfg)
    from minisub.lm import owl

    if isinstance(cfg, owl.OwlConfig) and not args.pretraining_only:  # every phase of a whole run
        from minisub.run import bench_lm

        if baseline is not None:
            bench_lm.report_against(cfg, baseline, args.steps, per_arm=not args.no_per_arm)
        else:
            bench_lm.report(cfg, args.steps, per_arm=not args.no_per_arm)
    elif hasattr(cfg, "lm_config"):  # a toy-LM experiment: pretraining is the bulk of its compute
        if baseline is not None:
            bench.report_lm_against(cfg.lm_config, baseline.lm_config, args.steps)
        else:
            bench.report_lm(cfg.lm_config, args.steps)
    else:
        bench.report(cfg)
    return 0


_FIELD = "field:"  # argparse dest prefix of config fields


def _run_flags(p: argparse.ArgumentParser, module, keep_params: bool, preset: str | None = None) -> None:
    from minisub.run.runner import NONFINITE

    p.add_argument("experiment", help="an experiment (minisub list)")
    presets = tuple(module.PRESETS) if module else None
    default = f" (default: {module.DEFAULT_PRESET})" if module else " (default: the experiment's DEFAULT_PRESET)"
    p.add_argument("--preset", choices=presets, help="the experiment's preset" + default)
    p.add_argument("--print-config", action="store_true", help="print the resolved config and its run id as JSON; compute nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", help="where the figure and its JSON go (default: the run directory)")
    p.add_argument("--block", type=int, help="seeds per block (a stored, resumable piece)")
    p.add_argument("--memory-budget", type=float, help="GB: choose the block size to fit this memory")
    p.add_argument("--shard", help="i/n: compute every n-th block starting at i (independent processes)")
    p.add_argument("--on-nonfinite", default="raise", choices=NONFINITE,
                   help="NaN/inf in a loss: raise (default), or mark the seed, leave it out of the statistics and go on")
    p.add_argument("--coordinator", help="host:port of process 0, for a multi-host run (jax.distributed)")
    p.add_argument("--num-processes", type=int, help="processes of a multi-host run")
    p.add_argument("--process-id", type=int, help="this process's index in a multi-host run")
    if keep_params:
        p.add_argument("--keep-params", action="store_true",
                       help="also store every seed's teacher and student parameters and their inits "
                            "(RUN_DIR/params/, read with minisub.run.params.load); not part of the run id")
    if module is not None:
        _field_flags(p, module, preset)


def _field_flags(p: argparse.ArgumentParser, module, preset: str | None) -> None:
    """One flag per config field of ``module``'s preset, from ``config.describe``: --help lists them."""
    from minisub import config as config_lib

    preset = preset if preset in module.PRESETS else module.DEFAULT_PRESET
    group = p.add_argument_group(f"config fields of {module.NAME} (defaults: preset {preset}; also as field=VALUE)")
    taken = {s for a in p._actions for s in a.option_strings}
    for info in config_lib.describe(module.PRESETS[preset]):
        flags = [f"--{info.name}", f"--{info.name.replace('_', '-')}"]
        flags = [f for k, f in enumerate(flags) if f not in taken and f not in flags[:k]]
        if not flags or not info.settable:
            continue
        allowed = f"; allowed: {info.allowed}" if info.allowed else ""
        note = f" -- {_plain(info.note)}" if info.note else ""
        text = f"{info.type_name}, default {info.text or repr(info.default)}{allowed}{note}"
        bool_kw = dict(nargs="?", const="true") if info.annotation is bool else {}
        group.add_argument(*flags, dest=_FIELD + info.name, default=argparse.SUPPRESS,
                           metavar=_metavar(info.annotation),
                           help=text.replace("%", "%%"), **bool_kw)


def _metavar(annotation) -> str:
    """``INT``, ``FLOAT``, ``STR``, ``BOOL``; a list: ``INT,...`` (``ARM,...`` for a list of arms)."""
    import typing

    if typing.get_origin(annotation) is tuple:
        return _metavar(typing.get_args(annotation)[0]) + ",..."
    return getattr(annotation, "__name__", "VALUE").upper()


def parser(module=None, preset: str | None = None) -> argparse.ArgumentParser:
    """The command line; with ``module``, ``run`` and ``merge`` also know that experiment's config fields."""
    p = _Parser(prog="minisub", description="A JAX laboratory for subliminal learning.")
    p.add_argument("--version", action="version", version=f"minisub {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    # allow_abbrev=False: a config field that is a prefix of a flag (lm-owl's --s, of --shard) must
    # reach the config, not the flag.
    r = sub.add_parser("run", help="run an experiment (served from the results store when already done)",
                       allow_abbrev=False, description="Run EXPERIMENT; `minisub run EXPERIMENT --help` lists its config fields.")
    _run_flags(r, module, keep_params=True, preset=preset)
    r.add_argument("--force", action="store_true", help="recompute even if stored")
    r.set_defaults(fn=cmd_run)
    m = sub.add_parser("merge", help="assemble the pieces written by --shard processes, computing nothing",
                       allow_abbrev=False)
    _run_flags(m, module, keep_params=False, preset=preset)
    m.set_defaults(fn=cmd_merge)
    sw = sub.add_parser("sweep", help="sweep config fields: --FIELD V1,V2,... (two fields: a grid), cached point by point",
                        allow_abbrev=False, description="Sweep EXPERIMENT over config fields given several values "
                        "(list fields: separate values by ';'); one or two swept fields; a figure of the metric "
                        "against the first, with 95%% Student-t intervals.")
    _run_flags(sw, module, keep_params=False, preset=preset)
    sw.set_defaults(fn=cmd_sweep)
    f = sub.add_parser("figures", help="redraw figures from their committed JSON, without training")
    f.add_argument("experiment", nargs="?")
    f.add_argument("--dir", default=str(FIGURES))
    f.set_defaults(fn=cmd_figures)
    rep = sub.add_parser("report", help="redraw every figure and figures/README.md; list what is missing")
    rep.add_argument("--dir", default=str(FIGURES))
    rep.set_defaults(fn=cmd_report)
    ls = sub.add_parser("list", help="list experiments and presets")
    ls.set_defaults(fn=cmd_list)
    runs = sub.add_parser("runs", help="list stored runs: status, seeds, fields that differ from the presets, when")
    runs.add_argument("experiment", nargs="?")
    runs.set_defaults(fn=cmd_runs)
    ex = sub.add_parser("export", help="one tidy table (run_id, experiment, arm, seed, metric, value, config.*) "
                                       "of stored runs")
    ex.add_argument("what", metavar="RUN_DIR|RUN_ID|EXPERIMENT")
    ex.add_argument("--format", choices=EXPORT_FORMATS, default="csv")
    ex.add_argument("--out", help="the file to write (default: ./<experiment>[-<run id>].<format>)")
    ex.set_defaults(fn=cmd_export)
    b = sub.add_parser("bench", help="seeds/s, FLOP rate against a large matmul, peak memory", allow_abbrev=False)
    b.add_argument("experiment")
    b.add_argument("--preset", default="paper", choices=tuple(module.PRESETS) if module else None)
    b.add_argument("--seeds", type=int, default=16)
    b.add_argument("--steps", type=int, default=50, help="toy-LM experiments: pretraining steps timed")
    b.add_argument("--pretraining-only", action="store_true", help="lm-owl: time pretraining alone")
    b.add_argument("--no-per-arm", action="store_true", help="lm-owl: the students as one program only")
    b.add_argument("--against", metavar="FIELD=VALUE[,...]",
                   help="toy-LM experiments: also time the config with these fields changed (a baseline, e.g. "
                        "kernels=reference,sampler=full), in the same process, and print the ratios")
    b.set_defaults(fn=cmd_bench)
    from minisub import cli_audit

    cli_audit.add(sub)
    return p


_FLAGS_WITHOUT_VALUE = {"--no-progress", "--force", "--keep-params", "--print-config", "-h", "--help"}


def experiment_first(tokens: list[str]) -> tuple[list[str], str | None, str | None]:
    """``tokens`` after the subcommand with the experiment's name moved first: (tokens, name, preset).

    ``--seeds 20 mnist-aux`` -> ``mnist-aux --seeds 20``: a flag not known to take no value takes
    the next token as its value, so the first token left over is the experiment.
    """
    rest, name, preset, k = list(tokens), None, None, 0
    while k < len(rest):
        token = rest[k]
        if token.startswith("--preset="):
            preset = token.split("=", 1)[1]
        if token.startswith("-"):
            takes_value = "=" not in token and token not in _FLAGS_WITHOUT_VALUE
            if token == "--preset" and k + 1 < len(rest):
                preset = rest[k + 1]
            k += 2 if takes_value else 1
        elif "=" in token or name is not None:
            k += 1
        else:
            name = rest.pop(k)
    return ([name] if name is not None else []) + rest, name, preset


def _parse(argv: list[str]):
    module = preset = None
    if argv and argv[0] in WITH_EXPERIMENT:
        tail, name, preset = experiment_first(argv[1:])
        argv = [argv[0], *tail]
        if name is not None:
            try:
                module = _experiment(name)
            except ConfigError:
                module = None  # reported by the command itself, in one line
    return parser(module, preset if argv and argv[0] != "bench" else None).parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    from minisub.run import precision
    from minisub.run.runner import NonFiniteError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = _parse(argv)
    except ConfigError as e:  # a broken experiment registration
        print(f"minisub: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help, --version, or an argparse error (already printed, one line)
        return e.code if isinstance(e.code, int) else 2
    args.argv = argv
    if extra and args.command not in WITH_EXPERIMENT:
        print(f"minisub: error: {args.command}: unexpected arguments {' '.join(extra)}", file=sys.stderr)
        return 2
    try:
        with precision.applied():  # every command computes at the recorded matmul precision
            return args.fn(args, extra)
    except ConfigError as e:
        print(f"minisub: error: {e}", file=sys.stderr)
        return 2
    except (MnistUnavailable, NonFiniteError, _Missing) as e:
        print(f"minisub: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
