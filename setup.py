"""amore_openmm: AMORE-MD adaptive sampling with ISOKANN χ functions inside OpenMM."""
from pathlib import Path

from setuptools import find_packages, setup

OPENMM_TORCHFORCE = "openmm>=8.5,<8.6"  # openmm-torch 1.10 wheels segfault with openmm 8.6
TORCH_TORCHFORCE = "torch>=2.10,<2.13"   # what the acellera-openmmtorch 1.10 wheels require
TORCHFORCE = {  # extras that bring the "torchforce" χ backend (openmm-torch) with its pins
    "torchforce": ["acellera-openmmtorch-cpu==1.10", OPENMM_TORCHFORCE, TORCH_TORCHFORCE],
    "cpu": ["acellera-openmmtorch-cpu==1.10", OPENMM_TORCHFORCE, TORCH_TORCHFORCE],
    "cuda12": ["acellera-openmmtorch-cu12==1.10", "openmm-cuda-12==8.5.2", "openmm==8.5.2",
               TORCH_TORCHFORCE],
    "cuda13": ["acellera-openmmtorch-cu13==1.10", "openmm-cuda-13==8.5.2", "openmm==8.5.2",
               TORCH_TORCHFORCE],
}

setup(
    name="amore_openmm",
    version="0.1.0",
    description="Atomistic mechanisms of rare events: ISOKANN χ, χ-minimum-energy paths and "
                "χ-sensitivity inside OpenMM",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    # the bundled systems (systems/: manifests, structures, topologies) ship inside the
    # package as amore_openmm.systems_data, so a non-editable install can load them
    packages=find_packages(include=["amore_openmm", "amore_openmm.*"]) +
    ["amore_openmm.systems_data"],
    package_dir={"amore_openmm.systems_data": "systems"},
    package_data={"amore_openmm.systems_data": [
        "*/system.toml", "*/*.pdb", "*/*.prmtop", "*/*.inpcrd", "*/*.xml",
        "*/conformations/*.pdb"]},
    install_requires=[
        "numpy>=1.24",
        # the core runs χ through openmm.PythonForce (OpenMM >= 8.5), 8.6 included; the
        # torchforce extras below narrow these pins for openmm-torch
        "openmm>=8.5",
        "torch>=2.10,<2.14",
        "mdtraj>=1.9.9",
        "parmed>=4.2",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "tomli>=2.0; python_version<'3.11'",
        "tomli-w>=1.0",
        "pymbar>=4.0",   # MBAR reweighting of χ-biased windows (amore_openmm.biased)
        "scipy>=1.10",   # logm, the Hungarian matching of memberships (amore_openmm.multichi)
    ],
    extras_require={
        **TORCHFORCE,
        "distributed": ["dask[distributed]>=2024.1", "dask-jobqueue>=0.8"],
        "test": ["pytest>=7", "pytest-timeout>=2"],
    },
    entry_points={"console_scripts": ["amore=amore_openmm.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Chemistry",
        "License :: OSI Approved :: MIT License",
    ],
)
