"""Stage 3a — χ: featurizers, the χ network, and the TorchScript file OpenMM loads.

χ = ν ∘ f: a featurizer ``f`` (pairwise distances, backbone dihedrals or raw coordinates; all
TorchScript-compatible ``torch.nn.Module``s) followed by a small network ``ν``. A
:class:`ChiModel` is trained by :class:`amore_openmm.isokann.Isokann` and exported once with
:meth:`ChiModel.export_torchscript` to a file that ``openmmtorch.TorchForce`` loads: positions
(n×3 nm, float32 or float64) → χ (0-dim float64). Metadata (atom count, featurizer, feature
names, training summary) travel in the file's ``_extra_files`` entry ``amore_chi.json``.

Units: positions in nm, ∇χ in nm⁻¹. Atom indices are 0-based.
"""
from __future__ import annotations

import copy
import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .data import atomic_write_bytes

__all__ = [
    "PairwiseDistances",
    "BackboneDihedrals",
    "Coordinates",
    "make_featurizer",
    "featurizer_from_spec",
    "build_network",
    "ChiModel",
    "ExportedChi",
    "read_torchscript_metadata",
    "METADATA_FILE",
    "FEATURIZER_KINDS",
]

#: name of the JSON entry in the TorchScript file's extra files
METADATA_FILE = "amore_chi.json"
FORMAT = "amore_chi"
FORMAT_VERSION = 1
FEATURIZER_KINDS = ("auto", "pairwise_all", "pairwise_heavy", "pairwise_polar", "dihedrals",
                    "coordinates")
#: below this many atoms "auto" uses all pairwise distances, above it heavy atoms only
AUTO_ALL_ATOMS_BELOW = 100


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    """(n, 3) -> (1, n, 3); (B, n, 3) unchanged."""
    if x.dim() == 2:
        return x.unsqueeze(0)
    return x


# --------------------------------------------------------------------------------------------
# featurizers
# --------------------------------------------------------------------------------------------
class PairwiseDistances(nn.Module):
    """Distances |x_j − x_i| (nm) for selected atom pairs, by direct differences.

    The Gram trick (|a|² + |b|² − 2a·b) loses the digits of short distances in float32, so
    distances are taken from coordinate differences. Distance features make χ invariant to
    rigid motions: Σᵢ ∇ᵢχ = 0 and Σᵢ xᵢ × ∇ᵢχ = 0.

    Args:
        n_atoms: atoms in the System (positions passed to ``forward`` have this many rows or
            more; extra atoms, e.g. solvent, are ignored).
        atoms: use all pairs i < j of these atoms (default: all atoms). Excludes ``pairs``.
        pairs: explicit (P, 2) list of atom index pairs.
        names: per-atom labels (length ``n_atoms``) used to name the features.
    """

    kind = "pairwise"
    __jit_ignored_attributes__ = ["feature_names", "atom_names"]
    __jit_unused_properties__ = ["n_features", "pairs"]

    def __init__(self, n_atoms: int, atoms: Sequence[int] | None = None,
                 pairs: Sequence[Sequence[int]] | np.ndarray | None = None,
                 names: Sequence[str] | None = None) -> None:
        super().__init__()
        n_atoms = int(n_atoms)
        if atoms is not None and pairs is not None:
            raise ValueError("PairwiseDistances: give either atoms= or pairs=, not both")
        if pairs is None:
            sel = np.arange(n_atoms) if atoms is None else np.asarray(list(atoms), dtype=np.int64)
            if len(np.unique(sel)) != len(sel):
                raise ValueError(f"PairwiseDistances: atoms= has duplicate indices: {list(sel)}")
            iu, ju = np.triu_indices(len(sel), k=1)
            pairs_arr = np.stack([sel[iu], sel[ju]], axis=1) if len(sel) > 1 else \
                np.zeros((0, 2), dtype=np.int64)
        else:
            pairs_arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if len(pairs_arr) == 0:
            raise ValueError("PairwiseDistances needs at least one atom pair (two atoms)")
        if pairs_arr.min() < 0 or pairs_arr.max() >= n_atoms:
            raise ValueError(f"PairwiseDistances: atom indices must lie in [0, {n_atoms}); got "
                             f"range [{pairs_arr.min()}, {pairs_arr.max()}]")
        if np.any(pairs_arr[:, 0] == pairs_arr[:, 1]):
            raise ValueError("PairwiseDistances: a pair (i, i) has zero distance and no gradient")
        self.n_atoms = n_atoms
        self.register_buffer("i", torch.as_tensor(pairs_arr[:, 0].copy()))
        self.register_buffer("j", torch.as_tensor(pairs_arr[:, 1].copy()))
        self.atom_names = list(names) if names is not None else [str(k) for k in range(n_atoms)]
        if len(self.atom_names) != n_atoms:
            raise ValueError(f"PairwiseDistances: names has {len(self.atom_names)} labels for "
                             f"{n_atoms} atoms")
        self.feature_names = [f"d({self.atom_names[a]},{self.atom_names[b]})"
                              for a, b in pairs_arr.tolist()]

    @property
    def n_features(self) -> int:
        return int(self.i.shape[0])

    @property
    def pairs(self) -> np.ndarray:
        return np.stack([self.i.cpu().numpy(), self.j.cpu().numpy()], axis=1)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = _as_batch(positions)
        d = x[:, self.j] - x[:, self.i]
        return torch.sqrt((d * d).sum(-1))

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_atoms": self.n_atoms, "pairs": self.pairs.tolist(),
                "names": list(self.atom_names)}


class BackboneDihedrals(nn.Module):
    """Backbone dihedrals φ, ψ as (sin, cos) features, named like ``"ALA2 φ"``.

    φ of residue r is C(r−1)–N–CA–C, ψ is N–CA–C–N(r+1); residues are those of the topology
    with N, CA and C atoms (residue numbers as in the PDB). The angle convention is IUPAC
    (as in mdtraj). Features are ordered [sin, cos] per dihedral.

    Args:
        topology: an OpenMM ``Topology`` (or None when ``quads`` is given).
        quads: explicit (D, 4) atom indices; ``dihedral_names`` then names them.
        n_atoms: atom count (taken from the topology when given).
    """

    kind = "dihedrals"
    __jit_ignored_attributes__ = ["feature_names", "dihedral_names"]
    __jit_unused_properties__ = ["n_features"]

    def __init__(self, topology: Any = None, quads: Sequence[Sequence[int]] | None = None,
                 dihedral_names: Sequence[str] | None = None,
                 n_atoms: int | None = None) -> None:
        super().__init__()
        if quads is None:
            if topology is None:
                raise ValueError("BackboneDihedrals needs a topology (or quads=)")
            quads, dihedral_names = self._backbone(topology)
            n_atoms = topology.getNumAtoms()
            if not quads:
                raise ValueError("BackboneDihedrals: the topology has no backbone φ/ψ (needs "
                                 "consecutive residues with N, CA, C atoms); use the "
                                 "'pairwise_all' featurizer instead")
        q = np.asarray(quads, dtype=np.int64).reshape(-1, 4)
        if n_atoms is None:
            n_atoms = int(q.max()) + 1
        self.n_atoms = int(n_atoms)
        self.register_buffer("quads", torch.as_tensor(q.copy()))
        self.dihedral_names = list(dihedral_names) if dihedral_names is not None else \
            [f"dihedral{k}" for k in range(len(q))]
        if len(self.dihedral_names) != len(q):
            raise ValueError("BackboneDihedrals: dihedral_names must name every quad")
        self.feature_names = [f"{t}({n})" for n in self.dihedral_names for t in ("sin", "cos")]

    @staticmethod
    def _backbone(topology: Any) -> tuple[list[list[int]], list[str]]:
        residues = []
        for res in topology.residues():
            atoms = {a.name: a.index for a in res.atoms()}
            residues.append((res, atoms))
        quads, names = [], []
        for k, (res, atoms) in enumerate(residues):
            if not all(n in atoms for n in ("N", "CA", "C")):
                continue
            label = f"{res.name}{res.id}"
            prev = residues[k - 1] if k > 0 else None
            nxt = residues[k + 1] if k + 1 < len(residues) else None
            if prev is not None and "C" in prev[1] and prev[0].chain is res.chain:
                quads.append([prev[1]["C"], atoms["N"], atoms["CA"], atoms["C"]])
                names.append(f"{label} φ")
            if nxt is not None and "N" in nxt[1] and nxt[0].chain is res.chain:
                quads.append([atoms["N"], atoms["CA"], atoms["C"], nxt[1]["N"]])
                names.append(f"{label} ψ")
        return quads, names

    @property
    def n_features(self) -> int:
        return 2 * int(self.quads.shape[0])

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """Dihedral angles (B, D) in radians, (−π, π]."""
        x = _as_batch(positions)
        p0, p1 = x[:, self.quads[:, 0]], x[:, self.quads[:, 1]]
        p2, p3 = x[:, self.quads[:, 2]], x[:, self.quads[:, 3]]
        b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
        n1 = torch.cross(b1, b2, dim=-1)
        n2 = torch.cross(b2, b3, dim=-1)
        y = torch.sqrt((b2 * b2).sum(-1)) * (b1 * n2).sum(-1)
        return torch.atan2(y, (n1 * n2).sum(-1))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        a = self.angles(positions)
        return torch.stack([torch.sin(a), torch.cos(a)], dim=-1).reshape(a.shape[0], -1)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_atoms": self.n_atoms,
                "quads": self.quads.cpu().numpy().tolist(),
                "dihedral_names": list(self.dihedral_names)}


class Coordinates(nn.Module):
    """Raw Cartesian coordinates (nm) of selected atoms and dimensions, for 2-D toy models.

    For Müller–Brown (one particle, dynamics in x and y) use ``Coordinates(1, dims=(0, 1))``.
    Not rotation invariant: use only for toys or already-aligned data.
    """

    kind = "coordinates"
    __jit_ignored_attributes__ = ["feature_names"]
    __jit_unused_properties__ = ["n_features"]

    def __init__(self, n_atoms: int, dims: Sequence[int] = (0, 1),
                 atoms: Sequence[int] | None = None) -> None:
        super().__init__()
        self.n_atoms = int(n_atoms)
        atoms_l = list(range(self.n_atoms)) if atoms is None else [int(a) for a in atoms]
        dims_l = [int(d) for d in dims]
        if not dims_l or any(d not in (0, 1, 2) for d in dims_l):
            raise ValueError(f"Coordinates: dims must be a non-empty subset of (0, 1, 2), "
                             f"got {tuple(dims)}")
        if not atoms_l or min(atoms_l) < 0 or max(atoms_l) >= self.n_atoms:
            raise ValueError(f"Coordinates: atoms must be indices in [0, {self.n_atoms})")
        self.register_buffer("atoms", torch.as_tensor(atoms_l, dtype=torch.long))
        self.register_buffer("dims", torch.as_tensor(dims_l, dtype=torch.long))
        axis = "xyz"
        self.feature_names = ([axis[d] for d in dims_l] if len(atoms_l) == 1 else
                              [f"{a}:{axis[d]}" for a in atoms_l for d in dims_l])

    @property
    def n_features(self) -> int:
        return int(self.atoms.shape[0] * self.dims.shape[0])

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = _as_batch(positions)
        return x[:, self.atoms][:, :, self.dims].reshape(x.shape[0], -1)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_atoms": self.n_atoms,
                "atoms": self.atoms.cpu().numpy().tolist(),
                "dims": self.dims.cpu().numpy().tolist()}


def featurizer_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a featurizer from its :meth:`spec` dictionary."""
    kind = spec.get("kind")
    if kind == "pairwise":
        return PairwiseDistances(spec["n_atoms"], pairs=spec["pairs"], names=spec.get("names"))
    if kind == "dihedrals":
        return BackboneDihedrals(quads=spec["quads"], dihedral_names=spec["dihedral_names"],
                                 n_atoms=spec["n_atoms"])
    if kind == "coordinates":
        return Coordinates(spec["n_atoms"], dims=spec["dims"], atoms=spec["atoms"])
    raise ValueError(f"unknown featurizer kind {kind!r} in saved χ model; expected pairwise, "
                     "dihedrals or coordinates")


def make_featurizer(system: Any, kind: str | None = "auto") -> nn.Module:
    """The featurizer for a :class:`~amore_openmm.systems.MolecularSystem`.

    Args:
        system: the MolecularSystem (uses ``n_atoms``, ``topology``, ``coordinate_dims``,
            ``atom_labels()``, ``heavy_atoms()``).
        kind: "auto" (coordinates for 2-D toys; all pairwise distances below
            ``AUTO_ALL_ATOMS_BELOW`` atoms; heavy-atom distances above), "pairwise_all",
            "pairwise_heavy", "pairwise_polar" (heavy atoms + H on N/O/S: no methyl rotors),
            "dihedrals" or "coordinates". None: the system's own default
            (``system.featurizer``).
    """
    if kind is None:
        kind = getattr(system, "featurizer", "auto") or "auto"
    if kind == "pairwise":
        kind = "pairwise_all"
    if kind not in FEATURIZER_KINDS:
        raise ValueError(f"featurizer kind {kind!r} is not known; use one of "
                         f"{', '.join(FEATURIZER_KINDS)}")
    n = int(system.n_atoms)
    dims = getattr(system, "coordinate_dims", None)
    if kind == "auto":
        if dims:
            kind = "coordinates"
        elif n < AUTO_ALL_ATOMS_BELOW:
            kind = "pairwise_all"
        else:
            kind = "pairwise_heavy"
    try:
        labels = system.atom_labels()
    except AttributeError:
        labels = None
    if kind == "pairwise_all":
        return PairwiseDistances(n, names=labels)
    if kind in ("pairwise_heavy", "pairwise_polar"):
        atoms = system.heavy_atoms() if kind == "pairwise_heavy" else system.polar_atoms()
        if len(atoms) < 2:
            raise ValueError(f"system {getattr(system, 'name', '')!r} has fewer than two "
                             f"atoms for {kind!r}; use featurizer 'pairwise_all'")
        return PairwiseDistances(n, atoms=atoms, names=labels)
    if kind == "dihedrals":
        return BackboneDihedrals(system.topology)
    return Coordinates(n, dims=dims or (0, 1, 2))


# --------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------
def _default_network_spec(featurizer: nn.Module) -> dict[str, Any]:
    n = int(featurizer.n_features)
    if getattr(featurizer, "kind", "") == "coordinates":
        # the paper's Müller–Brown network: 2→8→8→8→1, sigmoid; LayerNorm over two raw
        # coordinates would map every point to (±1) and destroy the information
        return {"kind": "mlp", "n_in": n, "hidden": [8, 8, 8], "layernorm": False}
    return {"kind": "pairnet", "n_in": n,
            "hidden": [max(1, round(n ** (2 / 3))), max(1, round(n ** (1 / 3)))],
            "layernorm": True}


def build_network(spec: dict[str, Any]) -> nn.Sequential:
    """A sigmoid MLP from a spec {"n_in", "hidden": [...], "layernorm": bool}.

    "pairnet" (the default for distances/dihedrals) is LayerNorm(n) → Linear(n→n^(2/3))
    sigmoid → Linear(→n^(1/3)) sigmoid → Linear(→1); χ is not clamped.
    """
    n_in, hidden = int(spec["n_in"]), [int(h) for h in spec["hidden"]]
    layers: list[nn.Module] = []
    if spec.get("layernorm", False):
        layers.append(nn.LayerNorm(n_in))
    prev = n_in
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.Sigmoid()]
        prev = h
    layers.append(nn.Linear(prev, 1))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------
# ChiModel
# --------------------------------------------------------------------------------------------
class ChiModel(nn.Module):
    """χ(x) = ν(f(x)): featurizer ``f`` then network ``ν``; positions in nm.

    Args:
        featurizer: a featurizer module (:class:`PairwiseDistances`,
            :class:`BackboneDihedrals`, :class:`Coordinates`).
        network: None for the default (pairnet; the paper's 2→8→8→8→1 net for coordinates),
            a spec dict for :func:`build_network`, or any ``nn.Module`` mapping (B, F) → (B, 1).
        seed: seed of the weight initialisation.
        metadata: free-form information (training summary etc.) saved and exported with χ.

    ``forward`` accepts (n, 3) or (B, n, 3) tensors of any float dtype (cast to the
    parameters' dtype) and returns χ of shape (B,).
    """

    __jit_ignored_attributes__ = ["metadata", "network_spec"]

    def __init__(self, featurizer: nn.Module, network: nn.Module | dict[str, Any] | None = None,
                 seed: int = 0, metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.featurizer = featurizer
        if network is None or isinstance(network, dict):
            spec = dict(network) if network is not None else _default_network_spec(featurizer)
            spec.setdefault("n_in", featurizer.n_features)
            if int(spec["n_in"]) != featurizer.n_features:
                raise ValueError(f"network spec n_in={spec['n_in']} but the featurizer gives "
                                 f"{featurizer.n_features} features")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                network = build_network(spec)
            self.network_spec: dict[str, Any] | None = spec
        else:
            self.network_spec = None
        self.network = network
        self.metadata: dict[str, Any] = dict(metadata or {})

    # -- properties ----------------------------------------------------------------------------
    @property
    def n_atoms(self) -> int:
        return int(self.featurizer.n_atoms)

    @property
    def n_features(self) -> int:
        return int(self.featurizer.n_features)

    @property
    def feature_names(self) -> list[str]:
        return list(getattr(self.featurizer, "feature_names", []))

    @property
    def featurizer_kind(self) -> str:
        return str(getattr(self.featurizer, "kind", type(self.featurizer).__name__))

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    # -- evaluation ----------------------------------------------------------------------------
    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.featurizer(positions.to(self.dtype)))

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        """χ (B,) from features (B, F) (the network ν alone)."""
        return self.network(features).reshape(-1)

    def _positions(self, positions: Any) -> np.ndarray:
        x = positions
        try:
            from openmm import unit
            if unit.is_quantity(x):
                x = x.value_in_unit(unit.nanometer)
        except ImportError:  # pragma: no cover
            pass
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 2:
            if x.shape[0] != self.n_atoms:
                raise ValueError(f"a 2-D positions array is one structure and must have "
                                 f"n_atoms={self.n_atoms} rows, got shape {x.shape}; pass "
                                 f"several structures as (B, {self.n_atoms}, 3)")
            x = x[None]
        if x.ndim != 3 or x.shape[2] != 3 or x.shape[1] < self.n_atoms:
            raise ValueError(f"positions must be (B, n_atoms, 3) or (n_atoms, 3) in nm with "
                             f"n_atoms >= {self.n_atoms}; got shape {x.shape}")
        return x

    def chi(self, positions: Any, batch_size: int = 8192) -> np.ndarray:
        """χ of (B, n, 3) or (n, 3) positions (nm; array or Quantity) as float64 array (B,)."""
        x = self._positions(positions)
        out = []
        with torch.no_grad():
            for s in range(0, len(x), batch_size):
                xb = torch.as_tensor(x[s:s + batch_size], dtype=self.dtype, device=self.device)
                out.append(self(xb).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def grad(self, positions: Any, batch_size: int = 4096) -> np.ndarray:
        """∇χ (nm⁻¹) at (B, n, 3) or (n, 3) positions, as float64 array (B, n, 3)."""
        return self.chi_and_grad(positions, batch_size)[1]

    def chi_and_grad(self, positions: Any, batch_size: int = 4096
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(χ (B,), ∇χ (B, n, 3)) in one autograd pass."""
        x = self._positions(positions)
        chis, grads = [], []
        for s in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[s:s + batch_size], dtype=self.dtype,
                                 device=self.device).requires_grad_(True)
            with torch.enable_grad():
                c = self(xb)
                (g,) = torch.autograd.grad(c.sum(), xb)
            chis.append(c.detach().double().cpu().numpy())
            grads.append(g.double().cpu().numpy())
        return np.concatenate(chis), np.concatenate(grads)

    # -- persistence ---------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description (stored with saved and exported models)."""
        return {
            "format": FORMAT, "version": FORMAT_VERSION,
            "n_atoms": self.n_atoms, "n_features": self.n_features,
            "featurizer": self.featurizer_kind,
            "featurizer_spec": self.featurizer.spec() if hasattr(self.featurizer, "spec") else None,
            "feature_names": self.feature_names,
            "network_spec": self.network_spec,
            "metadata": _jsonable(self.metadata),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Save weights and specs (``torch.save``, atomic). Reload with :meth:`load`."""
        payload = {"describe": self.describe(),
                   "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                   "dtype": str(self.dtype).replace("torch.", "")}
        if self.network_spec is None:
            payload["network_module"] = copy.deepcopy(self.network).cpu()
        buf = io.BytesIO()
        torch.save(payload, buf)
        return atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ChiModel":
        """Load a model written by :meth:`save` or :meth:`export_torchscript`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"χ model file {path} does not exist")
        if _is_torchscript(path):
            return cls._from_torchscript(path)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            # a custom (non-spec) network is pickled as a module; only load files you trust
            payload = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(payload, dict) or "describe" not in payload:
            raise ValueError(f"{path} is not a χ model saved by ChiModel.save")
        desc = payload["describe"]
        return cls._build(desc, payload["state_dict"], payload.get("network_module"),
                          getattr(torch, payload.get("dtype", "float32")), str(path))

    @classmethod
    def _build(cls, desc: dict[str, Any], state: dict[str, torch.Tensor],
               network_module: nn.Module | None, dtype: torch.dtype, where: str) -> "ChiModel":
        if desc.get("format") != FORMAT:
            raise ValueError(f"{where} is not an amore χ model (format {desc.get('format')!r})")
        if desc.get("featurizer_spec") is None:
            raise ValueError(f"{where}: the featurizer is not serialisable; rebuild the model")
        feat = featurizer_from_spec(desc["featurizer_spec"])
        net = network_module if network_module is not None else desc["network_spec"]
        if net is None:
            raise ValueError(f"{where} has no network spec or module")
        model = cls(feat, net, metadata=desc.get("metadata") or {})
        model.load_state_dict(state)
        return model.to(dtype)

    @classmethod
    def _from_torchscript(cls, path: Path) -> "ChiModel":
        meta = read_torchscript_metadata(path)
        if meta.get("network_spec") is None:
            raise ValueError(f"{path}: χ exported with a custom network cannot be turned back "
                             "into a ChiModel; load it with torch.jit.load instead")
        scripted = torch.jit.load(str(path), map_location="cpu")
        state = {k[len("model."):]: v for k, v in scripted.state_dict().items()
                 if k.startswith("model.")}
        return cls._build(meta, state, None, torch.float32, str(path))

    def export_torchscript(self, path: str | os.PathLike, training: dict[str, Any] | None = None
                           ) -> Path:
        """Write the TorchScript file OpenMM loads (``openmmtorch.TorchForce(path)``).

        The file maps positions (n×3 nm, float32 or float64, any device) to χ as a 0-dim
        float64 tensor; it is computed in float64. Its extra file ``amore_chi.json`` holds the
        atom count, featurizer, feature names, network spec and training summary.
        """
        path = Path(path)
        scripted = torch.jit.script(ExportedChi(self))
        desc = self.describe()
        if training is not None:
            desc["metadata"] = dict(desc["metadata"], training=_jsonable(training))
        buf = io.BytesIO()
        torch.jit.save(scripted, buf, _extra_files={METADATA_FILE: json.dumps(desc)})
        return atomic_write_bytes(path, buf.getvalue())

    def scripted(self) -> torch.jit.ScriptModule:
        """The exported TorchScript module in memory (what :meth:`export_torchscript` saves)."""
        return torch.jit.script(ExportedChi(self))

    def __repr__(self) -> str:
        return (f"ChiModel({self.featurizer_kind}: {self.n_atoms} atoms → {self.n_features} "
                f"features, network {self.network_spec or type(self.network).__name__})")


class ExportedChi(nn.Module):
    """positions (n, 3) nm, float32/float64 → χ (0-dim float64); float64 inside.

    Extra rows (atoms beyond those the featurizer uses) are ignored, so χ trained on a solute
    can run inside a System that holds more particles.
    """

    def __init__(self, model: ChiModel) -> None:
        super().__init__()
        inner = copy.deepcopy(model).cpu().double()
        # OpenMM differentiates with respect to positions only
        for p in inner.parameters():
            p.requires_grad_(False)
        self.model = nn.Module()
        self.model.featurizer = inner.featurizer
        self.model.network = inner.network
        self.n_atoms = int(model.n_atoms)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = positions.to(torch.float64).reshape(1, -1, 3)
        f = self.model.featurizer(x)
        return self.model.network(f).reshape(())


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def read_torchscript_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``amore_chi.json`` metadata of an exported χ file (atom count, features, training)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"χ TorchScript file {path} does not exist")
    extra = {METADATA_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    raw = extra[METADATA_FILE]
    if not raw:
        raise ValueError(f"{path} is TorchScript but has no {METADATA_FILE}: it was not "
                         "written by ChiModel.export_torchscript")
    return json.loads(raw)


def _jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays (and nested containers) to JSON-friendly values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
