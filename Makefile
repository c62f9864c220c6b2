# Two commands do everything: `make run` (the AMORE pipeline on alanine dipeptide) and `make test`.
# Both create .venv on first use. EXTRAS=cuda13 for a GPU install.
PYTHON ?= python3
VENV   ?= .venv
EXTRAS ?= cpu,distributed,test
PY      = $(VENV)/bin/python
comma  := ,
# one stamp per EXTRAS set: `make run EXTRAS=cuda13,...` on an existing .venv installs the new extras
STAMP   = $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
OUT    ?= results/alanine_dipeptide
export OMP_NUM_THREADS ?= 2

.PHONY: run test test-all science bench venv systems clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed*
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m amore_openmm.cli run systems/alanine_dipeptide --out $(OUT) --resume-if-exists
	@echo "Results: $(OUT)/report.md (figures in $(OUT)/figures/, paths in $(OUT)/mep/)"

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu" --timeout=900

test-all: $(STAMP)
	$(PY) -m pytest -q --timeout=3600

# the VGVAPG reproduction (paper Fig. 3): ≤ ~60 min on 2 CPU cores (ensemble: temperature replica
# exchange + HMR, bursts of the original system from it); paper_comparison.md beside
# the report says where we agree with the paper and where not
science: $(STAMP)
	$(PY) -m amore_openmm.cli run vgvapg --out results/vgvapg_science --preset science --resume-if-exists
	@echo "Results: results/vgvapg_science/report.md and paper_comparison.md"

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

systems: $(STAMP)
	$(PY) systems/build.py

clean:
	rm -rf $(VENV) results .pytest_cache
