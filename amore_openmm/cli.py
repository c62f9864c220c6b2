"""The ``amore`` command: the AMORE pipeline and its single stages.

    amore run SYSTEM --out RUN [--preset quick|default|paper] [--config FILE] [--SETTING V ...]
    amore run --out RUN --resume          # continue after the last completed stage
    amore sample SYSTEM --out data.npz    # trajectory frames + Koopman bursts
    amore train DATA --system SYSTEM --out chi_state.pt [--script chi.pt] [--init MODEL]
    amore mep --model MODEL --system SYSTEM --data DATA --out DIR
    amore sensitivity --model MODEL --system SYSTEM --data DATA --out DIR [--paths paths.npz]
    amore report RUN                      # rewrite report.json / report.md of a run
    amore info                            # platforms, versions, GPU
    amore build-systems [NAMES] [--out systems/]

Each subcommand is a thin shell over a Python function (see :mod:`amore_openmm.adaptive`).
Exit codes: 0 success, 2 usage or configuration error, 1 runtime failure, 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

from .config import ConfigError, RunConfig

__all__ = ["main", "build_parser", "info"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so that ``main`` returns the exit code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message}")


class _UsageError(Exception):
    pass


_SKIP = {"system", "preset"}  # positional / dedicated options


def _add_setting_flags(p: argparse.ArgumentParser) -> None:
    """One ``--flag`` per RunConfig setting (default None: only given flags override)."""
    g = p.add_argument_group("settings (override the preset, system.toml and --config)")
    for f in fields(RunConfig):
        if f.name in _SKIP:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "") + f" [default {f.default!r}]"
        t = str(f.type).replace(" | None", "")
        if t == "bool":
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=None, help=help_)
        else:
            conv = {"int": _auto(int), "float": _auto(float)}.get(t, str)
            g.add_argument(flag, dest=f.name, type=conv, default=None, metavar=t.upper(),
                           help=help_)


def _auto(conv: Any) -> Any:
    def parse(text: str) -> Any:
        return "auto" if text == "auto" else conv(text)
    parse.__name__ = conv.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``amore``."""
    p = _Parser(prog="amore", description="AMORE-MD inside OpenMM: ISOKANN χ, χ-minimum-energy "
                "paths, χ-sensitivity, adaptive sampling.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"amore_openmm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    r = sub.add_parser("run", help="the whole pipeline into a resumable run directory")
    r.add_argument("system_arg", nargs="?", metavar="SYSTEM",
                   help="bundled name (muller_brown, alanine_dipeptide, vgvapg), system folder, "
                        ".pdb, .prmtop or System .xml; optional with --resume")
    r.add_argument("--out", required=True, help="run directory")
    r.add_argument("--preset", choices=("default", "quick", "paper"), default=None)
    r.add_argument("--config", dest="config_file", help="TOML file with settings")
    r.add_argument("--resume", action="store_true", help="continue the run in --out")
    r.add_argument("--resume-if-exists", action="store_true",
                   help="resume when --out holds a run, start one otherwise")
    r.add_argument("--until", metavar="STAGE",
                   help="stop after this stage (e.g. train_0, final_paths)")
    r.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    _add_setting_flags(r)

    s = sub.add_parser("sample", help="trajectory frames + Koopman bursts into a data file")
    s.add_argument("system_arg", metavar="SYSTEM")
    s.add_argument("--out", required=True, help="KoopmanData .npz to write")
    s.add_argument("--n-starts", type=int, default=1000)
    s.add_argument("--n-koopman", type=int, default=1)
    s.add_argument("--lag-steps", type=int, default=None)
    s.add_argument("--stride-steps", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--platform", default="auto")
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--quiet", action="store_true")

    t = sub.add_parser("train", help="ISOKANN χ from a data file")
    t.add_argument("data", help="KoopmanData .npz")
    t.add_argument("--system", required=True)
    t.add_argument("--out", required=True, help="χ weights file (chi_state.pt)")
    t.add_argument("--script", help="also export TorchScript χ here (chi.pt)")
    t.add_argument("--init", help="continue from these χ weights")
    t.add_argument("--iterations", type=int, default=500)
    t.add_argument("--minibatch", type=int, default=100)
    t.add_argument("--optimizer", choices=("adam", "nesterov"), default="adam")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--featurizer", default="auto")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true")

    m = sub.add_parser("mep", help="χ-minimum-energy paths from transition states")
    m.add_argument("--model", required=True)
    m.add_argument("--system", required=True)
    m.add_argument("--data", required=True, help="KoopmanData .npz (transition states)")
    m.add_argument("--out", required=True, help="folder for paths.npz and path_XXX.pdb")
    m.add_argument("--n-paths", type=int, default=4)
    m.add_argument("--ts-low", type=float, default=0.49)
    m.add_argument("--ts-high", type=float, default=0.51)
    m.add_argument("--step", type=float, default=0.02)
    m.add_argument("--kappa", type=float, default=None)
    m.add_argument("--max-nodes", type=int, default=100)
    m.add_argument("--platform", default="Reference")
    m.add_argument("--workers", type=int, default=None)
    m.add_argument("--quiet", action="store_true")

    se = sub.add_parser("sensitivity", help="χ-sensitivity files from a model and samples")
    se.add_argument("--model", required=True)
    se.add_argument("--system", required=True)
    se.add_argument("--data", required=True, help="KoopmanData .npz (ensemble samples)")
    se.add_argument("--out", required=True, help="folder for atoms.csv, levelset.npz, "
                                                 "features.csv")
    se.add_argument("--paths", help="paths.npz: also path-vs-ensemble MSE and path PDBs")
    se.add_argument("--bins", type=int, default=100)

    rp = sub.add_parser("report", help="rewrite report.json / report.md of a run")
    rp.add_argument("run_dir", metavar="RUN")

    sub.add_parser("info", help="OpenMM platforms, versions, GPU")

    b = sub.add_parser("build-systems", help="regenerate the bundled systems")
    b.add_argument("names", nargs="*", help="muller_brown, alanine_dipeptide, vgvapg "
                                            "(default: all)")
    b.add_argument("--out", default=None, help="output folder (default: the bundled systems/)")
    return p


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in fields(RunConfig)
            if f.name not in _SKIP and getattr(args, f.name, None) is not None}


def cmd_run(args: argparse.Namespace) -> int:
    from .adaptive import AmoreRun
    t0 = time.perf_counter()
    run = AmoreRun(args.out, args.system_arg, preset=args.preset, config_file=args.config_file,
                   overrides=_settings(args), resume=args.resume,
                   resume_if_exists=args.resume_if_exists, quiet=args.quiet)
    if args.until is not None and args.until not in run.stages():
        raise ConfigError(f"--until {args.until!r} is not a stage of this run; stages: "
                          f"{', '.join(run.stages())}")
    with run:
        run.run(until=args.until)
    if not args.quiet:
        where = run.paths["report_md"] if run.is_complete() else run.out
        print(f"amore: done in {time.perf_counter() - t0:.1f} s; results: {where}",
              file=sys.stderr)
    return EXIT_OK


def cmd_sample(args: argparse.Namespace) -> int:
    from .adaptive import sample_data
    data = sample_data(args.system_arg, args.n_starts, args.n_koopman, lag_steps=args.lag_steps,
                       stride_steps=args.stride_steps, seed=args.seed, platform=args.platform,
                       workers=args.workers, progress=not args.quiet)
    data.save(args.out)
    print(f"{data} -> {args.out}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from .adaptive import train_chi
    from .chi import ChiModel
    from .data import KoopmanData
    data = KoopmanData.load(args.data)
    init = ChiModel.load(args.init) if args.init else None
    model, losses = train_chi(data, args.system, args.iterations, model=init,
                              featurizer=args.featurizer, minibatch=args.minibatch,
                              optimizer=args.optimizer, lr=args.lr,
                              weight_decay=args.weight_decay, seed=args.seed)
    model.save(args.out)
    if args.script:
        model.export_torchscript(args.script)
    print(f"χ trained on {len(data)} starts, final loss "
          f"{losses[-1] if losses else float('nan'):.4g} -> {args.out}")
    return EXIT_OK


def cmd_mep(args: argparse.Namespace) -> int:
    from .adaptive import save_paths, trace_paths
    from .chi import ChiModel
    from .data import KoopmanData
    from .mep import write_path_pdb
    from .systems import load_system
    ms = load_system(args.system)
    model = ChiModel.load(args.model)
    data = KoopmanData.load(args.data, n_atoms=ms.n_atoms)
    paths = trace_paths(ms, model, data, args.n_paths, window=(args.ts_low, args.ts_high),
                        step=args.step, kappa=args.kappa, max_nodes=args.max_nodes,
                        platform=args.platform, workers=args.workers, progress=not args.quiet)
    out = Path(args.out)
    save_paths(out / "paths.npz", paths)
    for i, p in enumerate(paths):
        write_path_pdb(out / f"path_{i:03d}.pdb", p, ms.topology)
    print(f"{len(paths)} χ-MEP(s) -> {out / 'paths.npz'}")
    return EXIT_OK


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from .adaptive import load_chipaths, write_sensitivity
    from .chi import ChiModel
    from .data import KoopmanData
    from .systems import load_system
    ms = load_system(args.system)
    model = ChiModel.load(args.model)
    data = KoopmanData.load(args.data, n_atoms=ms.n_atoms)
    paths = load_chipaths(Path(args.paths)) if args.paths else None
    res = write_sensitivity(args.out, model, ms, data.x, paths=paths, bins=args.bins,
                            mep_dir=Path(args.paths).parent if args.paths else None)
    top = ", ".join(f"{i}:{label}" for i, label, _ in res["sensitivity"].top(5))
    print(f"sensitivity -> {args.out}; top atoms (0-based): {top}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .adaptive import AmoreRun
    with AmoreRun.open(args.run_dir) as run:
        run.stage_report()
        print(run.paths["report_md"])
    return EXIT_OK


def info() -> dict[str, Any]:
    """Versions, OpenMM platforms and GPU availability."""
    import platform as _pf

    import numpy
    import openmm
    from . import __version__
    out: dict[str, Any] = {"amore_openmm": __version__, "python": _pf.python_version(),
                           "numpy": numpy.__version__, "openmm": openmm.__version__}
    plats = []
    for i in range(openmm.Platform.getNumPlatforms()):
        pl = openmm.Platform.getPlatform(i)
        plats.append(f"{pl.getName()} (speed {pl.getSpeed():g})")
    out["platforms"] = plats
    try:
        import torch
        out["torch"] = torch.__version__
        out["torch_cuda"] = bool(torch.cuda.is_available())
        out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as exc:  # noqa: BLE001 - report, never fail
        out["torch"] = f"not importable ({exc})"
        out["gpu"] = None
    try:
        import openmmtorch
        out["openmmtorch"] = getattr(openmmtorch, "__version__", "installed")
    except Exception as exc:  # noqa: BLE001
        out["openmmtorch"] = f"not importable ({exc})"
    names = [openmm.Platform.getPlatform(i).getName()
             for i in range(openmm.Platform.getNumPlatforms())]
    out["openmm_gpu_platform"] = [n for n in names if n in ("CUDA", "OpenCL", "HIP")] or None
    out["cpu_cores"] = os.cpu_count()
    return out


def cmd_info(args: argparse.Namespace) -> int:
    for k, v in info().items():
        print(f"{k:20s} {', '.join(v) if isinstance(v, list) else v}")
    return EXIT_OK


def cmd_build_systems(args: argparse.Namespace) -> int:
    from .builder import build_bundled_systems
    from .systems import systems_root
    out = Path(args.out) if args.out else systems_root()
    t0 = time.perf_counter()
    written = build_bundled_systems(out, args.names or None)
    for name, files in written.items():
        print(f"{name}: {len(files)} file(s) in {out / name}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "sample": cmd_sample, "train": cmd_train, "mep": cmd_mep,
            "sensitivity": cmd_sensitivity, "report": cmd_report, "info": cmd_info,
            "build-systems": cmd_build_systems}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``amore``; returns the exit code (0 ok, 2 usage/config, 1 failure)."""
    from .systems import SystemLoadError
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except _UsageError as exc:
        print(f"{exc}\n(see `amore --help` / `amore COMMAND --help`)", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from .adaptive import RunDirError
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, SystemLoadError, RunDirError) as exc:
        print(f"amore {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as exc:
        print(f"amore {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"amore {args.command}: interrupted; completed stages are saved (resume with "
              "--resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the command line reports, never tracebacks
        if os.environ.get("AMORE_DEBUG"):
            raise
        print(f"amore {args.command}: failed: {type(exc).__name__}: {exc} "
              "(set AMORE_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
