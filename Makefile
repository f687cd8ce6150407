# Two commands do all the set-up on a fresh machine:
#   make train   creates .venv, installs fastvec, trains PPO on CartPole-v1
#   make test    creates .venv, installs fastvec with its test extras, runs the suite
#                against the compiled kernels and again with FASTVEC_PURE_PYTHON=1
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# the CPU build of torch that lies on this machine's disk; installed first so that
# the project's looser requirement (torch>=2.1) is already met
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: train test bench bench-kernels peers faults lint clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py fastvec/_kernels.pyx fastvec/_kernels.pxd
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q Cython "setuptools>=77" wheel numpy
	$(PIP) install -q --no-build-isolation -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m ppo.train $(ARGS)

# Each pass runs its tests in TEST_PROCESSES processes at once (pytest-xdist): most of the suite waits (on
# workers, timeouts, subprocesses), and one test at a time used about a fifth of 2 cores. Then the tests
# marked serial (tight time bounds, or load of their own), one at a time, on cores nothing else uses.
TEST_PROCESSES ?= 4
PURE := FASTVEC_PURE_PYTHON=1

test: $(STAMP)
	$(PY) -c "import fastvec; assert fastvec.KERNELS == 'cython', fastvec.KERNELS; print('kernels:', fastvec.KERNELS)"
	$(PY) -m pytest -q -n $(TEST_PROCESSES) -m "not serial"
	$(PY) -m pytest -q -m "serial"
	$(PURE) $(PY) -m pytest -q -n $(TEST_PROCESSES) -m "not compiled_only and not one_pass and not serial"
	$(PURE) $(PY) -m pytest -q -m "serial and not compiled_only and not one_pass"

bench: $(STAMP)
	$(PY) -m benchmarks.vec_env $(ARGS)

# EnvPool and PufferLib, the peers of the benchmark study (optional)
peers: $(STAMP)
	PY=$(PY) bash benchmarks/install_peers.sh

bench-kernels: $(STAMP)
	$(PY) -m benchmarks.kernels $(ARGS)

faults: $(STAMP)
	$(PY) -m benchmarks.faults

# start-up time and worker memory of 8 CartPole envs per engine (issue 9; ~4 min on 2 cores)
.PHONY: bench-startup
bench-startup: $(STAMP)
	$(PY) -m benchmarks.startup $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check fastvec ppo tests benchmarks

clean:
	rm -rf build dist *.egg-info fastvec/*.so fastvec/_kernels.c $(VENV)
