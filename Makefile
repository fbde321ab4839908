# kiln — the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: venv sysdeps demo test test-slow lint bench clean

# System tools from Debian: gcc/g++ build the CPU and FPGA targets, graphviz draws the IR graph
# in report.html, chromium checks that page in a test. Installed only when missing; without
# root (and no sudo) the step says what to install and goes on (those tests then skip).
SYSDEPS_BIN := dot:graphviz chromium:chromium
sysdeps:
	@missing=""; for pair in $(SYSDEPS_BIN); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; \
	  else echo "kiln: please install:$$missing (apt-get)"; exit 0; fi; \
	  echo "kiln: installing$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get install -y -qq $$missing; fi

venv: sysdeps $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -e ".[dev,gpu]"
	touch $@

demo: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m kiln.tools.demo

# The suite CI runs; `slow` tests (the sanitized and two-process determinism runs over the whole
# model zoo, TVM builds of the larger models) run with `make test-slow` (about 15 more minutes).
test: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n 2 -m "not slow" tests

test-slow: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n 2 -m slow tests

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
