"""What this machine offers a run: versions, OpenMM platforms, the χ backend, GPUs."""
from __future__ import annotations

import os
from typing import Any

__all__ = ["environment_info"]


def environment_info() -> dict[str, Any]:
    """Versions, OpenMM platforms, the χ backend and GPU availability (``amore info``);
    never raises: what cannot be imported is reported as such."""
    import platform as _pf

    import numpy
    import openmm
    from . import __version__
    out: dict[str, Any] = {"amore_openmm": __version__, "python": _pf.python_version(),
                           "numpy": numpy.__version__, "openmm": openmm.__version__}
    from .systems import get_platform, platform_names
    names = platform_names()
    out["platforms"] = [f"{n} (speed {get_platform(n).getSpeed():g})" for n in names]
    try:
        import torch
        out["torch"] = torch.__version__
        out["torch_cuda"] = bool(torch.cuda.is_available())
        out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as exc:  # noqa: BLE001 - report, never fail
        out["torch"] = f"not importable ({exc})"
        out["gpu"] = None
    try:
        from .forces.torchforce import import_openmmtorch
        openmmtorch = import_openmmtorch()
        out["openmmtorch"] = getattr(openmmtorch, "__version__", "installed")
    except Exception as exc:  # noqa: BLE001
        out["openmmtorch"] = f"not importable ({exc})"
    try:    # the χ backend inside OpenMM (ChiRestraintForce, ChiReporter, χ-MEPs) and why
        from .forces import backend_info
        chosen = backend_info()
        out["chi_backend"] = f"{chosen['name']} ({chosen['reason']})"
    except Exception as exc:  # noqa: BLE001 - e.g. a bad AMORE_CHI_BACKEND: report it
        out["chi_backend"] = f"none ({exc})"
    out["openmm_gpu_platform"] = [n for n in names if n in ("CUDA", "OpenCL", "HIP")] or None
    out["cpu_cores"] = os.cpu_count()
    return out
