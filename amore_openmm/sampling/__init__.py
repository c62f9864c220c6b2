"""Stage 1 — sampling: Koopman bursts from a pool of reused OpenMM Contexts.

A *burst* sets a start x, draws Maxwell–Boltzmann velocities, runs ``lag_steps`` integrator
steps and keeps the end positions. :class:`BurstSampler` runs K bursts from each of N starts
and returns :class:`~amore_openmm.data.KoopmanData`. A Context is never created per burst:
:class:`ContextPool` creates one Context per slot once and reuses it.

Modules, lowest first:

* :mod:`.seeds` — random-stream keys (:func:`burst_seed`, :func:`packed_stream_key`), the
  Reference platform's fast re-seeding;
* :mod:`.sanity` — which starts and burst ends are physical (:class:`BurstSanity`);
* :mod:`.engine` — the engine protocol (:class:`BurstEngine`: ``run_chunk``/``close``), the
  plain :class:`Engine`, the per-process engine cache (:func:`cached_chunk`,
  :func:`engine_cache`);
* :mod:`.packing` — :func:`pack_replicas` (M non-interacting copies in one System);
  :mod:`.packed_engine` — :class:`PackedEngine` (the same protocol on a packed System);
* :mod:`.workers` — worker processes (Reference slots); :mod:`.layout` — the measured CPU
  pool layout (:func:`choose_cpu_layout`); :mod:`.pool` — :class:`ContextPool`,
  :func:`choose_platform`, :func:`platform_can_minimize` / :func:`minimizer_platforms`;
* :mod:`.sampler` — :class:`BurstSampler` (chunks, seeds, checkpoints, the stored atoms and
  the memory guard; :mod:`.run_state`, :mod:`.checkpoint`); :mod:`.trajectory` —
  :func:`sample_trajectory`.
"""
from __future__ import annotations

from .engine import (DEFAULT_MAX_DISPLACEMENT, BurstEngine, BurstFailureWarning, BurstSpec,
                     Engine, cached_chunk, default_platform_properties, engine_cache)
from .packed_engine import PackedEngine, PackedSpec
from .packing import PackedSystem, PackingError, pack_replicas
from .layout import choose_cpu_layout, layout_matters
from .pool import (ContextPool, available_platforms, choose_platform, minimizer_platforms,
                   opencl_is_pocl, platform_can_minimize, usable_cpus)
from .run_state import estimate_run_bytes
from .sampler import BurstSampler
from .sanity import BurstSanity
from .seeds import burst_seed, packed_stream_key
from .trajectory import sample_trajectory

__all__ = [
    "ContextPool", "BurstSampler", "BurstFailureWarning", "BurstSanity", "sample_trajectory",
    "burst_seed", "packed_stream_key", "choose_platform", "available_platforms",
    "usable_cpus", "default_platform_properties", "pack_replicas", "PackedSystem",
    "PackedSpec", "PackedEngine", "PackingError", "BurstEngine", "Engine", "BurstSpec",
    "cached_chunk", "engine_cache", "DEFAULT_MAX_DISPLACEMENT", "choose_cpu_layout",
    "layout_matters", "platform_can_minimize", "minimizer_platforms", "opencl_is_pocl",
    "estimate_run_bytes",
]
