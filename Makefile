# gemdepth: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Every resolved version, made by `make lock`; `make install` (and so CI) installs exactly this.
LOCK   := requirements.lock
# The torch release the lock is tested with (see README: Installation); `make lock` keeps it.
LOCK_CONSTRAINTS := requirements-torch.txt
LOCK_EXTRAS := --extra test --extra export --extra app --extra browser --extra experiment --extra official
PIP_VERSION := 26.3
UV_VERSION  := 0.13.9
# Another CUDA (or the CPU) build of the same torch release, e.g.
#   make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
TORCH_INDEX_URL ?=
# Packages that come with the default (PyPI, CUDA 13) torch wheel and not with other builds.
TORCH_BUILD_PACKAGES := ^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==

.PHONY: install lock test test-fast demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK) $(LOCK_CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "requirements.lock needs Python >= 3.11 (found $$($(BIN)/python -V)); run: rm -rf $(VENV) && make install PYTHON=python3.11"; exit 1; }
	$(BIN)/python -m pip install --quiet "pip==$(PIP_VERSION)"
ifeq ($(strip $(TORCH_INDEX_URL)),)
	$(BIN)/pip install -r $(LOCK)
else
	$(BIN)/pip install -r $(LOCK_CONSTRAINTS) --index-url $(TORCH_INDEX_URL)
	grep -Ev '$(TORCH_BUILD_PACKAGES)' $(LOCK) > $(VENV)/requirements-no-torch.lock
	$(BIN)/pip install -r $(VENV)/requirements-no-torch.lock
endif
	$(BIN)/pip install --no-deps -e .
	touch $(STAMP)

# Re-resolve every dependency (pyproject ranges + the tested torch) into $(LOCK).
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	$(BIN)/uv pip compile pyproject.toml $(LOCK_EXTRAS) --python-version 3.11 \
		--constraint $(LOCK_CONSTRAINTS) --annotation-style line -o $(LOCK)

# Idle OpenMP threads must not spin on small shared machines (tiny ops got many times slower).
test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP)
	$(BIN)/gemdepth demo

bench: $(STAMP)
	$(BIN)/gemdepth bench

clean:
	rm -rf $(VENV) build *.egg-info
