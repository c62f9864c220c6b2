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
* :mod:`.workers` — worker processes (Reference slots); :mod:`.pool` — :class:`ContextPool`,
  :func:`choose_platform`;
* :mod:`.sampler` — :class:`BurstSampler` (chunks, seeds, checkpoints; :mod:`.run_state`,
  :mod:`.checkpoint`); :mod:`.trajectory` — :func:`sample_trajectory`.
"""
from __future__ import annotations

from .engine import (DEFAULT_MAX_DISPLACEMENT, BurstEngine, BurstFailureWarning, BurstSpec,
                     Engine, cached_chunk, default_platform_properties, engine_cache)
from .packed_engine import PackedEngine, PackedSpec
from .packing import PackedSystem, PackingError, pack_replicas
from .pool import ContextPool, available_platforms, choose_platform, usable_cpus
from .sampler import BurstSampler
from .sanity import BurstSanity
from .seeds import burst_seed, packed_stream_key
from .trajectory import sample_trajectory

__all__ = [
    "ContextPool", "BurstSampler", "BurstFailureWarning", "BurstSanity", "sample_trajectory",
    "burst_seed", "packed_stream_key", "choose_platform", "available_platforms",
    "usable_cpus", "default_platform_properties", "pack_replicas", "PackedSystem",
    "PackedSpec", "PackedEngine", "PackingError", "BurstEngine", "Engine", "BurstSpec",
    "cached_chunk", "engine_cache", "DEFAULT_MAX_DISPLACEMENT",
]
