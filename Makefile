# safeops: two commands a fresh machine with python3 and pip needs.
#   make test   create .venv, install -e .[test,bench,tfmot,probability,docs], run the default tests
#   make bench  same install, then the benchmark suite's quick mode (report in bench-results/)
#   (both first build the fused C++ kernels if a compiler is there: `make native`)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS := test,bench,tfmot,probability,docs

.PHONY: install native test test-all bench bench-full docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the package metadata changes: a second run is fast.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP) native

# The fused C++ kernels (safeops/native.py): built once into ~/.cache/safeops, a no-op when
# cached. Without a C++ compiler this fails and the ops use their pure-TF path (the leading
# '-' keeps going; tests/test_native.py then skips its fused half, or fails if a compiler exists).
native: $(STAMP)
	-TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m safeops.native build

# The fused kernels built with AddressSanitizer (a cache entry of their own, in a temporary
# directory) and the fuzz test of every raw op run on them: an out-of-bounds access aborts.
ASAN_RT = $(shell $${CXX:-c++} -print-file-name=libasan.so) $(shell $${CXX:-c++} -print-file-name=libstdc++.so)
native-asan: $(STAMP)
	@cache=$$(mktemp -d) && trap 'rm -rf "$$cache"' EXIT && \
	SAFEOPS_CACHE_DIR="$$cache" SAFEOPS_NATIVE_SANITIZE=address TF_CPP_MIN_LOG_LEVEL=2 \
	LD_PRELOAD="$(ASAN_RT)" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	$(PY) tests/test_native_fuzz.py

test: $(STAMP) native
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q

test-all: $(STAMP) native
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -m ""

bench: $(STAMP) native
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m benchmarks --quick

bench-full: $(STAMP) native
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m benchmarks --full

# The documentation site (guides + API reference from the docstrings) into site/; strict:
# a broken link or an undocumented public name fails the build.
docs: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) docs/build.py --out site

clean:
	rm -rf $(VENV) bench-results .pytest_cache site build/docs-src
