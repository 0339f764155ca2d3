# The two commands the README promises:
#   make demo   train a small GPT on Python's own source for a few minutes, print a sample
#   make test   the whole test suite on TensorFlow, JAX and PyTorch, plus the docs build
# Both create or refresh .venv themselves (pinned by constraints.txt).

PYTHON ?= python3
VENV ?= .venv
# TensorFlow: with XLA (on for recipes) the fastest backend for the demo on the 2-core
# CPUs measured (docs/benchmarks.md, "make demo").
BACKEND ?= tensorflow
BACKENDS ?= tensorflow jax torch
# pytest-xdist workers per pass: a pass is mostly one busy Python thread (tracing,
# compiling, subprocess start-up), so two workers keep a 2-core machine busy. Each
# worker takes whole files (--dist loadfile): a module's server fixture starts once.
# Files are handed out slowest first (tests/conftest.py's SLOW_FILES; xdist's own reorder,
# by test count, is off). Each pass lists its 15 slowest tests: where to look when the
# suite grows slow.
TEST_WORKERS ?= 2
PYTEST = $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15
# The pass that also runs the tests marked cross_backend (they start every backend
# themselves) and backend_independent, once: PyTorch's, the quickest per-backend pass.
# One pass instead of two saves a start-up and a tail where one worker idles. A BACKENDS
# without it runs none of them.
ONCE_BACKEND ?= torch
PER_BACKEND = not cross_backend and not backend_independent
PY := $(VENV)/bin/python

.PHONY: demo test test-backend lint format docs bench clean

# Extras are spelled as the package metadata normalises them (lm-eval, not lm_eval).
EXTRAS = tensorflow,jax,torch,hub,hf,text,recipes,onnx,serve,lm-eval,dev,bench,docs
# uv installs the pinned set (constraints.txt pins every package) in under half pip's time
# (docs/benchmarks.md, "make test on a fresh clone"). uv reads no pip configuration, so pip
# installs torch first: it finds the CPU wheel pip is configured to find, and uv keeps it.
# --compile-bytecode: pip compiles .pyc files at install and uv does not; where
# PYTHONDONTWRITEBYTECODE is set (it is on the machines measured here) nothing writes them
# later, and every process would compile TensorFlow's sources again.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt uv torch
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

demo: $(VENV)/.installed
	KERAS_BACKEND=$(BACKEND) $(VENV)/bin/keras-gpt pretrain --config recipes/configs/demo.toml --overwrite $(ARGS)

test: $(VENV)/.installed lint
	set -e; for b in $(BACKENDS); do \
		if [ $$b = $(ONCE_BACKEND) ]; then \
			echo "=== pytest on $$b, with the cross-backend and backend-independent tests"; \
			KERAS_BACKEND=$$b $(PYTEST) tests; \
		else \
			echo "=== pytest on $$b"; \
			KERAS_BACKEND=$$b $(PYTEST) -m "$(PER_BACKEND)" tests; \
		fi; \
	done
	$(MAKE) docs

test-backend: $(VENV)/.installed
	KERAS_BACKEND=$(BACKEND) $(PYTEST) -m "$(PER_BACKEND)" tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(VENV)/.installed
	$(PY) benchmarks/train.py

clean:
	rm -rf $(VENV) site
