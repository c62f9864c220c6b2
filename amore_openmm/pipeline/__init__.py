"""The AMORE pipeline: :class:`AmoreRun` (adaptive generations in a resumable, locked run
directory) and its stages as plain functions.

Modules: :mod:`.state` (layout, errors, lock, stage seeds), :mod:`.run` (AmoreRun),
:mod:`.run_stages` (the bodies of its stages), :mod:`.stages` (single stages as functions:
the ``amore sample/train/mep/sensitivity`` commands), :mod:`.runio` (files of the layout),
:mod:`.report` (report.json/report.md, figures). Settings: :mod:`amore_openmm.config`.
"""
from .report import build_report, report_markdown
from .run import AmoreRun
from .runio import (load_chipaths, load_paths, read_data, read_model, save_paths,
                    write_features_csv, write_path_files)
from .stages import burst_starts, sample_data, top_atoms, trace_paths, train_chi, \
    write_sensitivity
from .state import STATE_VERSION, DamagedFileError, RunDirError, RunLock, run_layout

__all__ = ["AmoreRun", "RunDirError", "DamagedFileError", "RunLock", "run_layout",
           "sample_data", "train_chi", "trace_paths", "write_sensitivity", "burst_starts",
           "top_atoms", "save_paths", "load_paths", "load_chipaths", "read_data", "read_model",
           "write_features_csv", "write_path_files", "build_report", "report_markdown",
           "STATE_VERSION"]
