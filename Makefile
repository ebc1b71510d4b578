# spikewatch: two entry points, `make demo` and `make test`. Everything else is a helper target.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install system-deps lint typecheck bench clean sync-deploy

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# CPU build of torch from the local wheel cache; a bare `torch` may pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

demo: install
	$(PY) scripts/demo.py

lint: install
	$(PY) -m ruff check .

typecheck: install
	$(PY) -m mypy

test: install system-deps
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/signal_cost.py

sync-deploy:  # the Kubernetes ConfigMap ships a copy of the default rule pack
	cp server/rules/default.yaml deploy/kubernetes/rules.yaml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
