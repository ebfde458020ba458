# The two commands a newcomer needs: `make demo` and `make test` (both set up first).
PY ?= python3
OUT ?= saliency-out

.PHONY: setup setup-dev demo test lint docs bench

# Take torch first when it is missing, pinned to a release whose CPU wheel ships with this
# machine image; an unpinned install would pull a multi-GB CUDA build. Any torch>=2.3 works.
setup:
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e .

setup-dev:
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"

demo: setup
	$(PY) -m saliency demo --out $(OUT) --overwrite

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: setup-dev lint
	$(PY) -m pytest -q

# The site, in site/ (open site/index.html): its pictures are drawn and its notebooks run from the
# current code by docs/_scripts/ (cached in .docs-cache/ under a hash of their inputs). The
# audit report's screenshot needs Chromium (apt-get install chromium).
docs: setup-dev
	$(PY) -m mkdocs build --strict

# Quantus would otherwise be free to pull another torch: pin the one installed.
bench: setup-dev
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > .bench-constraints.txt
	PIP_CONSTRAINT=.bench-constraints.txt $(PY) -m pip install -q -e ".[dev,bench]"
	$(PY) benchmarks/engine.py
	$(PY) benchmarks/methods.py
	$(PY) benchmarks/viz.py
	$(PY) benchmarks/audit.py
	$(PY) benchmarks/audit_run.py
	$(PY) benchmarks/huggingface.py
	$(PY) benchmarks/generation.py
