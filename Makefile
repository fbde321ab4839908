# kiln — the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: venv demo test lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -e ".[dev,gpu]"
	touch $@

demo: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m kiln.tools.demo

test: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n 2 tests

lint: venv
	$(VENV)/bin/ruff check kiln tests bench
	$(VENV)/bin/mypy

# The benchmarks that run on this kind of machine; bench/gpu.py needs a CUDA device and
# bench/fpga.py --hls4ml builds hls4ml projects (minutes). Results go to BENCHMARKS.md.
bench: venv
	MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072 $(PY) bench/frontend.py
	$(PY) bench/cpu.py
	$(PY) bench/compression.py
	$(PY) bench/fpga.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
