"""Random-stream keys of bursts (the lowest module of :mod:`amore_openmm.sampling`).

Every burst, packed burst group, block of starts and trajectory gets its own OpenMM seed,
derived by hashing the run seed with integers that name it, so that results depend on the
seed and on those integers only. Also here: the fast re-seeding of the Reference platform's
process-global random generator and the lock that serialises Reference bursts in a process.
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import struct
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import openmm

__all__ = ["burst_seed", "packed_stream_key"]

SEED_MOD = 2**31 - 2  # OpenMM seeds are 31-bit ints; 0 means "pick randomly": map to 1..2^31-2
STREAM_TAG = 0x414D4F52  # "AMOR": separates burst streams from other uses of the same seed
TRAJ_TAG = 0x5452414A    # "TRAJ"
BLOCK_TAG = 0x424C4F4B   # "BLOK"
FORCE_TAG = 0x46524345   # "FRCE"
PACK_TAG = 0x5041434B    # "PACK": separates packed streams from unpacked ones


def _u64(v: int) -> int:
    v = int(v)
    return v if v >= 0 else v + (1 << 64)


def stream_seeds(seed: int, start_index: int, k: int, attempt: int = 0,
                 tag: int = STREAM_TAG) -> tuple[int, int]:
    """(integrator seed, velocity seed) for one burst attempt; both valid non-zero OpenMM seeds.

    BLAKE2b of the packed integers (3 µs; numpy's SeedSequence costs ~15–40 µs per burst).
    """
    digest = hashlib.blake2b(struct.pack("<5Q", tag, _u64(seed), _u64(start_index), _u64(k),
                                         _u64(attempt)), digest_size=8).digest()
    a, b = struct.unpack("<II", digest)
    return a % SEED_MOD + 1, b % SEED_MOD + 1


def burst_seed(seed: int, start_index: int, k: int) -> int:
    """The integrator seed of burst ``k`` from start ``start_index`` in a run with ``seed``.

    A hash (BLAKE2b) of the three integers, mapped to a valid non-zero 31-bit
    OpenMM seed. With per-burst re-seeding (``reseed="burst"``, the default on Reference) it
    is the key of the burst's random stream: the same triple gives the same burst on the same
    platform, whatever the pool size. Retries after a failed burst use further derived seeds.
    """
    return stream_seeds(seed, start_index, k, 0)[0]


def packed_stream_key(seed: int, bursts: Sequence[tuple[int, int]], attempt: int = 0) -> int:
    """Integrator seed of one packed burst group: a hash of ``seed``, ``attempt`` and the
    (start index, k) of every copy in the group, mapped to a valid non-zero OpenMM seed."""
    words = [PACK_TAG, int(seed) % 2**64, int(attempt)]
    for start, k in bursts:
        words += [int(start) % 2**64, int(k) % 2**64]
    state = np.random.SeedSequence(words).generate_state(1, np.uint32)
    return int(state[0]) % SEED_MOD + 1


# ---------------------------------------------------------------------------------------------
# Reference platform: fast re-seeding of the process-global random generator
# ---------------------------------------------------------------------------------------------
_REF_SEED_FN: Any = None
_REF_SEED_LOOKED = False
#: serialises Reference bursts inside one process (its random generator is process-global)
REF_LOCK = threading.Lock()


def reference_seed_function() -> Callable[[int], None] | None:
    """``SimTKOpenMMUtilities::setRandomNumberSeed`` from libOpenMM, or None if not found."""
    global _REF_SEED_FN, _REF_SEED_LOOKED
    if _REF_SEED_LOOKED:
        return _REF_SEED_FN
    _REF_SEED_LOOKED = True
    base = Path(openmm.__file__).resolve().parent
    candidates = sorted(glob.glob(str(base.parent / "OpenMM.libs" / "lib" / "libOpenMM.so*")))
    candidates += sorted(glob.glob(str(base.parent.parent.parent / "libOpenMM.so*")))  # conda
    candidates += ["libOpenMM.so"]
    for cand in candidates:
        try:
            lib = ctypes.CDLL(cand)
            fn = getattr(lib, "_ZN6OpenMM20SimTKOpenMMUtilities19setRandomNumberSeedEj")
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_uint32]
        fn.restype = None
        _REF_SEED_FN = fn
        break
    return _REF_SEED_FN
