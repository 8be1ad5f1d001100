# The two front-door commands (README): `make demo` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
OUT ?= runs

.PHONY: install demo test lint

# torch first (DeepSpeed builds against the installed torch: --no-build-isolation), then the
# project; constraints.txt keeps every step on torch 2.13.0.
install:
	$(PIP) install -q -c constraints.txt "torch==2.13.0" setuptools wheel
	$(PIP) install -q -c constraints.txt --no-build-isolation -e ".[test]"

demo: install
	OMP_NUM_THREADS=2 sivae toy2d --dataset 8gaussians --objective soft-intro --out $(OUT)/toy2d-8gaussians

test: install
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q

lint:
	ruff check .
