"""Stage 3a — χ: featurizers, the χ network, and the TorchScript file OpenMM loads.

χ = ν ∘ f: a featurizer ``f`` (symmetry-aware or labelled pairwise distances, backbone
dihedrals or raw coordinates; all TorchScript-compatible ``torch.nn.Module``s) followed by a
small network ``ν``. A :class:`ChiModel` is trained by :class:`amore_openmm.isokann.Isokann`
and exported once with :meth:`ChiModel.export_torchscript` to a file that
``openmmtorch.TorchForce`` loads: positions (n×3 nm, float32 or float64) → χ (0-dim float64);
the same file maps a batch (B, n, 3) → (B,). Metadata (atom count, featurizer, feature names,
featurized atoms, training summary) travel in the file's extra file ``amore_chi.json``.

Modules: :mod:`.featurizers` (PairwiseDistances, BackboneDihedrals, Coordinates),
:mod:`.symmetry` (SymmetricPairwiseDistances, equivalent_atom_groups), :mod:`.factory`
(make_featurizer, featurizer_from_spec), :mod:`.network`, :mod:`.model` (ChiModel),
:mod:`.export` (ExportedChi, read_torchscript_metadata).

Units: positions in nm, ∇χ in nm⁻¹. Atom indices are 0-based.
"""
from .export import METADATA_FILE, ExportedChi, read_torchscript_metadata
from .factory import FEATURIZER_KINDS, featurizer_from_spec, featurizer_kind, make_featurizer
from .featurizers import BackboneDihedrals, Coordinates, PairwiseDistances
from .model import ChiModel
from .network import build_network
from .symmetry import SymmetricPairwiseDistances, equivalent_atom_groups

__all__ = [
    "PairwiseDistances",
    "SymmetricPairwiseDistances",
    "BackboneDihedrals",
    "Coordinates",
    "equivalent_atom_groups",
    "make_featurizer", "featurizer_kind",
    "featurizer_from_spec",
    "build_network",
    "ChiModel",
    "ExportedChi",
    "read_torchscript_metadata",
    "METADATA_FILE",
    "FEATURIZER_KINDS",
]
