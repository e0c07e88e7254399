# The two commands:  make reproduce   (set up everything, then reproduce the tutorial)
#                    make test        (set up everything, then run the tests)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup data reproduce test benchmark compare clean

setup: $(VENV)/.installed data

# A virtual environment with the package (editable) and pytest; redone when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Fashion-MNIST: found if already there, else Debian's package (as root), else torchvision's download.
data: $(VENV)/.installed
	$(BIN)/bn-lenet data --get

reproduce: setup
	$(BIN)/python experiments/reproduce.py

test: setup
	$(BIN)/python -m pytest -q

# The tutorial's loop against the project's, in one process: results/benchmark/<device>.json and .md (~7 min).
benchmark: setup
	$(BIN)/python -m bn_lenet benchmark

# Scratch vs nn.BatchNorm vs no BN over 5 seeds, precise BN: results/sweeps/compare/report.md (the sweep
# configs/sweeps/compare.toml; ~40 min on 2 cores one run after another, resumable).
compare: setup
	$(BIN)/python -m bn_lenet sweep configs/sweeps/compare.toml

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
