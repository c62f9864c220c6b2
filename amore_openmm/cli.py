"""The ``amore`` command: the AMORE pipeline and its single stages.

    amore run SYSTEM --out RUN [--preset quick|default|paper|science] [--config FILE] [--SETTING V ...]
    amore run --out RUN --resume          # continue after the last completed stage
    amore sample SYSTEM --out data.npz    # trajectory frames + Koopman bursts
    amore train DATA --system SYSTEM --out chi_state.pt [--script chi.pt] [--init MODEL]
    amore mep --model MODEL --system SYSTEM --data DATA --out DIR
    amore sensitivity --model MODEL --system SYSTEM --data DATA --out DIR [--paths paths.npz]
    amore fes --model MODEL --system SYSTEM --out DIR [--windows 21 --kappa auto]
    amore report RUN                      # rewrite report.json / report.md of a run
    amore info                            # platforms, versions, GPU
    amore build-systems [NAMES] [--out systems/]

Each subcommand parses, calls one function of :mod:`amore_openmm.pipeline` and maps errors
to exit codes. Every setting flag is a :class:`~amore_openmm.config.RunConfig` setting: its
help, type, checks and default come from there (χ-MEP settings left at "auto" use
:func:`~amore_openmm.mep.trace_chi_mep`'s defaults).
Exit codes: 0 success, 2 bad input (usage, settings, files), 1 runtime failure, 130
interrupted by Ctrl-C (SIGINT), 143 by SIGTERM. Either signal stops the command at the next
safe point (:mod:`amore_openmm.interrupt`); a second one quits at once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Sequence

from .config import ConfigError, RunConfig, check_settings
from .interrupt import exit_code, stop_on_signals
from .presets import PRESET_NAMES

__all__ = ["main", "build_parser", "info", "COMMANDS", "STAGE_OPTIONS"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

#: the settings each single-stage command takes: RunConfig field names, or (flag, field)
#: where the flag reads better than the setting's name
STAGE_OPTIONS: dict[str, tuple[Any, ...]] = {
    "sample": ("n_starts", "n_koopman", "lag_steps", "stride_steps", "seed", "platform",
               "workers"),
    "train": ("iterations", "minibatch", "optimizer", "lr", "weight_decay", "restore_best",
              "featurizer", "seed"),
    "mep": (("n_paths", "final_paths"), "ts_low", "ts_high", ("step", "path_step"), "kappa",
            ("max_nodes", "path_max_nodes"), "platform", "workers", "path_tracer"),
    "sensitivity": (("bins", "sensitivity_bins"), "top_k"),
}
_FIELDS = {f.name: f for f in fields(RunConfig)}
_RUN_SKIP = ("system", "preset")  # positional / dedicated options of `amore run`


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so that ``main`` returns the exit code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message}")


class _UsageError(Exception):
    pass


def _converter(name: str, base: str) -> Any:
    """Text -> checked value of setting ``name`` (the check of RunConfig)."""
    def parse(text: str) -> Any:
        value: Any = text
        try:
            if text != "auto" and base in ("int", "float"):
                value = int(text) if base == "int" else float(text)
            elif text == "auto" and "None" in str(_FIELDS[name].type):
                return None
            return check_settings({name: value}, "command line")[name]
        except (ValueError, ConfigError) as exc:
            raise argparse.ArgumentTypeError(str(exc) if isinstance(exc, ConfigError) else
                                             f"setting '{name}' = {text!r}: {exc}") from None
    parse.__name__ = base
    return parse


def _add_setting(g: Any, name: str, flag: str | None = None, override: bool = False) -> None:
    """``--flag`` for RunConfig setting ``name``; ``override``: default None (only flags
    given on the command line override the preset), else the RunConfig default."""
    f = _FIELDS[name]
    flag = "--" + (flag or name).replace("_", "-")
    default = f.default if f.default is not MISSING else None
    shown = "auto" if default is None else default
    help_ = f"{f.metadata.get('help', '')} [default: {'preset, else ' if override else ''}" \
            f"{shown}]"
    base = str(f.type).replace(" | None", "")
    if base == "bool":
        g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                       default=None if override else default, help=help_)
    else:
        g.add_argument(flag, dest=name, type=_converter(name, base),
                       default=None if override else default, metavar=base.upper(),
                       help=help_)


def _add_stage_options(p: argparse.ArgumentParser, command: str) -> None:
    for opt in STAGE_OPTIONS[command]:
        flag, name = opt if isinstance(opt, tuple) else (opt, opt)
        _add_setting(p, name, flag)


def _add_fes(sub: Any) -> None:
    import inspect
    from .biased import umbrella_free_energy
    defaults = {k: v.default for k, v in inspect.signature(umbrella_free_energy).parameters.items()}
    f = sub.add_parser("fes", help="F(χ) and the barrier ΔF‡ from umbrella windows along χ "
                                   "(MBAR)")
    f.add_argument("--model", required=True, help="χ model (a run's model/chi_state.pt or "
                                                  "chi.pt)")
    f.add_argument("--system", required=True, help="system (bundled name, folder or file)")
    f.add_argument("--out", required=True, help="folder for fes.csv, fes.png, fes.json, "
                                                "fes.npz, umbrella_samples.npz")
    f.add_argument("--windows", default=defaults["windows"],
                   help="auto (default: pilot rounds place windows and per-window κ until "
                        "neighbours overlap) or a number of centres evenly spaced on [0, 1]")
    f.add_argument("--kappa", default=defaults["kappa"],
                   help="restraint stiffness in kJ/mol (auto: kT/Δz², Δz the window spacing; "
                        "with --windows auto: the first pilot round's κ)")
    f.add_argument("--max-windows", type=int, default=defaults["max_windows"],
                   help="window budget of --windows auto")
    for name in ("frames", "equilibration", "bins", "bootstrap", "seed"):
        f.add_argument(f"--{name}", type=int, default=defaults[name])
    f.add_argument("--platform", default=defaults["platform"], help="OpenMM platform")
    f.add_argument("--quiet", action="store_true")


def _add_run(sub: Any) -> None:
    r = sub.add_parser("run", help="the whole pipeline into a resumable run directory")
    r.add_argument("system_arg", nargs="?", metavar="SYSTEM",
                   help="bundled name (muller_brown, alanine_dipeptide, vgvapg), system folder, "
                        ".pdb, .prmtop or System .xml (with --pdb); optional with --resume")
    r.add_argument("--out", required=True, help="run directory")
    r.add_argument("--preset", choices=PRESET_NAMES, default=None)
    r.add_argument("--config", dest="config_file", help="TOML file with settings")
    r.add_argument("--resume", action="store_true", help="continue the run in --out")
    r.add_argument("--resume-if-exists", action="store_true",
                   help="resume when --out holds a run, start one otherwise")
    r.add_argument("--until", metavar="STAGE",
                   help="stop after this stage (e.g. train_0, final_paths)")
    r.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    g = r.add_argument_group("settings (override the preset, system.toml and --config)")
    for name in _FIELDS:
        if name not in _RUN_SKIP:
            _add_setting(g, name, override=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``amore``."""
    p = _Parser(prog="amore", description="AMORE-MD inside OpenMM: ISOKANN χ, χ-minimum-energy "
                "paths, χ-sensitivity, adaptive sampling.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"amore_openmm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_run(sub)

    s = sub.add_parser("sample", help="trajectory frames + Koopman bursts into a data file")
    s.add_argument("system_arg", metavar="SYSTEM")
    s.add_argument("--out", required=True, help="KoopmanData .npz to write")
    _add_stage_options(s, "sample")
    s.add_argument("--quiet", action="store_true")

    t = sub.add_parser("train", help="ISOKANN χ from a data file")
    t.add_argument("data", help="KoopmanData .npz")
    t.add_argument("--system", required=True)
    t.add_argument("--out", required=True, help="χ weights file (chi_state.pt)")
    t.add_argument("--script", help="also export TorchScript χ here (chi.pt)")
    t.add_argument("--init", help="continue from these χ weights")
    t.add_argument("--n-chi", type=int, default=1, dest="n_chi",
                   help="number of memberships k (metastable states; default 1: one χ)")
    _add_stage_options(t, "train")
    t.add_argument("--quiet", action="store_true")

    m = sub.add_parser("mep", help="χ-minimum-energy paths from transition states")
    for name, what in (("model", "χ model (chi_state.pt or chi.pt)"), ("system", "system"),
                       ("data", "KoopmanData .npz (transition states)"),
                       ("out", "folder for paths.npz and path_XXX.pdb")):
        m.add_argument(f"--{name}", required=True, help=what)
    _add_stage_options(m, "mep")
    m.add_argument("--quiet", action="store_true")

    se = sub.add_parser("sensitivity", help="χ-sensitivity files from a model and samples")
    for name, what in (("model", "χ model"), ("system", "system"),
                       ("data", "KoopmanData .npz (ensemble samples and weights)"),
                       ("out", "folder for atoms.csv, levelset.npz, features.csv")):
        se.add_argument(f"--{name}", required=True, help=what)
    se.add_argument("--paths", help="paths.npz: also path-vs-ensemble MSE and path PDBs "
                                    "(written into --out)")
    se.add_argument("--fit", action="append", default=[], metavar="MODEL",
                    help="another χ fit of the same data (other seed; repeatable): the "
                         "ranking is the mean over --model and the fits, its error holds "
                         "the fit-to-fit spread")
    _add_stage_options(se, "sensitivity")

    _add_fes(sub)
    tr = sub.add_parser("transitions", help="k-state χ: rate matrix, χ-MEPs, sensitivities "
                                            "and channels per pair of states")
    for name, what in (("model", "k-membership model (amore train --n-chi K)"),
                       ("system", "system"), ("data", "KoopmanData .npz"),
                       ("out", "folder for rates.json, pair_I_J/, figures")):
        tr.add_argument(f"--{name}", required=True, help=what)
    tr.add_argument("--paths-per-pair", type=int, default=1)
    tr.add_argument("--path-step", type=float, default=0.01)
    tr.add_argument("--platform", default="Reference", help="OpenMM platform")
    tr.add_argument("--quiet", action="store_true")
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
def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import AmoreRun
    t0 = time.perf_counter()
    overrides = {n: getattr(args, n) for n in _FIELDS
                 if n not in _RUN_SKIP and getattr(args, n, None) is not None}
    run = AmoreRun(args.out, args.system_arg, preset=args.preset, config_file=args.config_file,
                   overrides=overrides, resume=args.resume,
                   resume_if_exists=args.resume_if_exists, quiet=args.quiet)
    with run:
        if args.until is not None and args.until not in run.stages():
            raise ConfigError(f"--until {args.until!r} is not a stage of this run; stages: "
                              f"{', '.join(run.stages())}")
        run.run(until=args.until)
    if not args.quiet:
        where = run.paths["report_md"] if run.is_complete() else run.out
        print(f"amore: done in {time.perf_counter() - t0:.1f} s; results: {where}",
              file=sys.stderr)
    return EXIT_OK


def cmd_sample(args: argparse.Namespace) -> int:
    from .pipeline import sample_data
    data = sample_data(args.system_arg, args.n_starts, args.n_koopman, lag_steps=args.lag_steps,
                       stride_steps=args.stride_steps, seed=args.seed, platform=args.platform,
                       workers=args.workers, progress=not args.quiet)
    data.save(args.out)
    print(f"{data} -> {args.out}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from .pipeline import read_data, read_model, train_chi
    data = read_data(args.data)
    if args.n_chi != 1:
        return train_multichi(args, data)
    init = read_model(args.init) if args.init else None
    model, losses = train_chi(data, args.system, args.iterations, model=init,
                              featurizer=args.featurizer, minibatch=args.minibatch,
                              optimizer=args.optimizer, lr=args.lr,
                              weight_decay=args.weight_decay, seed=args.seed,
                              restore_best=args.restore_best, progress=not args.quiet)
    model.save(args.out)
    if args.script:
        model.export_torchscript(args.script)
    print(f"χ trained on {len(data)} starts, final loss "
          f"{losses[-1] if losses else float('nan'):.4g} -> {args.out}")
    return EXIT_OK


def train_multichi(args: argparse.Namespace, data: Any) -> int:
    """``amore train --n-chi K`` (K ≠ 1): k memberships (amore_openmm.multichi)."""
    from .isokann import Isokann
    from .multichi import MultiChiModel, check_n_chi
    from .systems import load_system
    check_n_chi(args.n_chi, data.n_starts)
    init = MultiChiModel.load(args.init) if args.init else None
    est = Isokann(iterations=args.iterations, minibatch=args.minibatch,
                  optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                  restore_best=args.restore_best, seed=args.seed, progress=not args.quiet,
                  n_chi=args.n_chi,
                  featurizer=None if args.featurizer in (None, "auto") else args.featurizer)
    model = est.fit(data, model=init, system=None if init else load_system(args.system))
    model.save(args.out)
    if args.script:
        model.export_torchscript(args.script)
    print(f"{model.n_chi} memberships trained on {len(data)} starts, final loss "
          f"{est.summary_.get('final_loss') or float('nan'):.4g} -> {args.out}")
    return EXIT_OK


def cmd_transitions(args: argparse.Namespace) -> int:
    from .multichi import MultiChiModel, transitions
    from .pipeline import read_data
    from .systems import load_system
    ms = load_system(args.system)
    model = MultiChiModel.load(args.model)
    data = read_data(args.data, n_atoms=ms.n_atoms)
    summary = transitions(model, data, ms, args.out, n_paths=args.paths_per_pair,
                          step=args.path_step, platform=args.platform)
    valid = "valid" if summary["rates_valid"] else "INVALID: " + "; ".join(
        summary["rates_notes"])
    print(f"{model.n_chi} states, {len(summary['pairs'])} pairs -> {args.out}; rate matrix "
          f"{valid}")
    return EXIT_OK


def cmd_mep(args: argparse.Namespace) -> int:
    from .pipeline import read_data, read_model, trace_paths, write_path_files
    from .pipeline.state import check_out_dir
    from .systems import load_system
    check_out_dir(Path(args.out))
    ms = load_system(args.system)
    model = read_model(args.model)
    data = read_data(args.data, n_atoms=ms.n_atoms)
    paths = trace_paths(ms, model, data, args.final_paths, window=(args.ts_low, args.ts_high),
                        step=args.path_step, kappa=args.kappa, max_nodes=args.path_max_nodes,
                        platform=args.platform, workers=args.workers, tracer=args.path_tracer,
                        progress=not args.quiet)
    out = write_path_files(args.out, paths, ms.topology, atoms=ms.selection)
    cert = ", ".join(f"{p.n_certified}/{len(p)}" for p in paths)
    print(f"{len(paths)} χ-MEP(s) -> {out / 'paths.npz'}; certified nodes per path: {cert}")
    return EXIT_OK


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from .pipeline import load_chipaths, read_data, read_model, write_sensitivity
    from .pipeline.state import check_out_dir
    from .systems import load_system
    check_out_dir(Path(args.out))
    ms = load_system(args.system)
    model = read_model(args.model)
    fits = [read_model(f) for f in args.fit]
    data = read_data(args.data, n_atoms=ms.n_atoms)
    paths = load_chipaths(args.paths) if args.paths else None
    res = write_sensitivity(args.out, model, ms, data.x, weights=data.weights, paths=paths,
                            bins=args.sensitivity_bins, top_k=args.top_k,
                            mep_dir=args.out if paths else None, fits=fits)
    top = ", ".join(f"{a['index_0based']}:{a['label']} {a['mean_grad_sq']:.3g}±"
                    f"{a['mean_grad_sq_err']:.2g} (in top-{a['top_k']}: "
                    f"{a['top_k_frequency']:.2f})" for a in res["top_atoms"][:5])
    over = f" (mean over {len(fits) + 1} χ fits)" if fits else ""
    print(f"sensitivity -> {args.out}; top atoms (0-based){over}: {top}")
    return EXIT_OK


def _number_or_auto(value: Any, convert: Any, flag: str, what: str) -> Any:
    """``value`` converted, or "auto"; a ConfigError naming ``flag`` otherwise."""
    if value == "auto":
        return value
    try:
        return convert(value)
    except ValueError:
        raise ConfigError(f"{flag} {value!r} is not a number; give {what} or auto") from None


def cmd_fes(args: argparse.Namespace) -> int:
    from .biased import MIN_OVERLAP, umbrella_free_energy
    from .pipeline import read_model
    from .pipeline.state import check_out_dir
    from .systems import load_system
    check_out_dir(Path(args.out))
    kappa = _number_or_auto(args.kappa, float, "--kappa",
                            "the stiffness in kJ/mol (e.g. 5000)")
    windows = _number_or_auto(args.windows, int, "--windows",
                              "a count of evenly spaced windows (e.g. 21)")
    ms = load_system(args.system)
    fes = umbrella_free_energy(ms, read_model(args.model), args.out, windows=windows,
                               kappa=kappa, frames=args.frames, max_windows=args.max_windows,
                               equilibration=args.equilibration, bins=args.bins,
                               bootstrap=args.bootstrap, seed=args.seed,
                               platform=args.platform, progress=not args.quiet)
    b = json.loads((Path(args.out) / "fes.json").read_text())
    if not b["certified"]:
        raise RuntimeError(f"F(χ) is not certified: neighbouring windows overlap by "
                           f"{b['window_overlap_min']:.3f} at least (need "
                           f"{MIN_OVERLAP}) or ΔF‡ is undetermined; the uncertified files "
                           f"are in {args.out} ({b.get('note', '')}). Give more --windows "
                           "or --max-windows, more --frames or a softer --kappa")
    print(f"F(χ) -> {Path(args.out) / 'fes.csv'}; ΔF‡ = {b['barrier_kJ_mol']:.2f} ± "
          f"{b['barrier_err_kJ_mol']:.2f} kJ/mol ({b['barrier_kT']:.2f} ± "
          f"{b['barrier_err_kT']:.2f} kT); effective sample size "
          f"{fes.effective_sample_size:.0f}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .pipeline import AmoreRun
    with AmoreRun.open(args.run_dir) as run:
        run.stage_report()
        print(run.paths["report_md"])
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from .environment import environment_info
    for k, v in environment_info().items():
        print(f"{k:20s} {', '.join(v) if isinstance(v, list) else v}")
    return EXIT_OK


def cmd_build_systems(args: argparse.Namespace) -> int:
    from .systems import build_bundled_systems, systems_root
    out = Path(args.out) if args.out else systems_root()
    t0 = time.perf_counter()
    written = build_bundled_systems(out, args.names or None)
    for name, files in written.items():
        print(f"{name}: {len(files)} file(s) in {out / name}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "sample": cmd_sample, "train": cmd_train, "mep": cmd_mep,
            "sensitivity": cmd_sensitivity, "fes": cmd_fes, "report": cmd_report, "info": cmd_info,
            "build-systems": cmd_build_systems, "transitions": cmd_transitions}

#: bad input: settings, systems, run directories, damaged or missing files, paths that
#: name the wrong kind of thing (every ValueError subclass of the library is bad input)
_BAD_INPUT = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
              FileExistsError, PermissionError)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command](args)
    except _BAD_INPUT as exc:
        if os.environ.get("AMORE_DEBUG"):
            raise
        print(f"amore {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        print(f"amore {args.command}: interrupted; completed stages are saved (resume with "
              "--resume)", file=sys.stderr)
        return exit_code(exc)
    except Exception as exc:  # noqa: BLE001 - the command line reports, never tracebacks
        if os.environ.get("AMORE_DEBUG"):
            raise
        print(f"amore {args.command}: failed: {type(exc).__name__}: {exc} "
              "(set AMORE_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``amore``; returns the exit code (0 ok, 2 bad input, 1 failure,
    130/143 interrupted by SIGINT/SIGTERM, at a safe point: checkpoints and temporary files
    are dealt with before it returns)."""
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
    with stop_on_signals():
        return _dispatch(args)


if __name__ == "__main__":
    raise SystemExit(main())
