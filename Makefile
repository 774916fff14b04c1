# Two entry points on a fresh machine: `make demo` and `make test` (README.md).
# torch is installed first, pinned, so that nothing pulls a CUDA build onto a machine
# without a GPU; set TORCH_SPEC to choose another build (e.g. TORCH_SPEC=torch on a GPU box).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test test-all bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[hf,dev,ref]"
	touch $@

# The kernels built ahead of time (quantkit/kernels/build.py): rebuilt when their sources
# change; where the build fails (no C compiler) numba's JIT runs them, so setup goes on.
KERNEL_SOURCES := $(wildcard quantkit/kernels/*.py)
$(BIN)/.kernels-built: $(BIN)/.installed $(KERNEL_SOURCES)
	$(BIN)/python -m quantkit.kernels.build || echo "warning: kernels not built ahead of time; numba's JIT runs them (slower start)" >&2
	touch $@

setup: $(BIN)/.installed $(BIN)/.kernels-built

demo: setup
	$(BIN)/python -m quantkit_cli.demo

# `make test`: the correctness suite without the tests marked slow (large property sweeps,
# end-to-end runs against reference tools, real-process races); `make test-all` (CI) runs all.
# PYTEST_WORKERS="-n 2 --dist loadgroup" runs them on pytest-xdist workers (the Ray tests share
# one, `xdist_group`); on this 2-core machine that took more CPU and no less time, so the
# default is one process.
PYTEST_WORKERS ?=
test: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_WORKERS) $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS) $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/bench_convert.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info demo-output quantkit/kernels/_aot_* quantkit/kernels/_compiled.json
