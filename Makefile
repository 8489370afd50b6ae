# ttt-icl-book: `make book` builds the site (executing every notebook); `make test` runs every test.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
MATHJAX_VERSION := 3.2.2
MATHJAX_DIR := _static/mathjax
STAMP := $(VENV)/.installed

.PHONY: book book-stored test test-py test-nb test-nb-kernels test-site setup mathjax sysdeps notebook clean

setup: $(STAMP) $(MATHJAX_DIR)/tex-chtml.js

# The lock is installed with --no-deps (it is complete: pip check proves it), so that xgboost-cpu can stand in
# for the xgboost of tabicl's prior, whose CUDA build would pull ~200 MB of nvidia-nccl-cu12 onto a CPU machine.
$(STAMP): requirements.lock pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip uninstall -q -y xgboost nvidia-nccl-cu12 2>/dev/null || true
	$(VPY) -m pip install -q --no-deps -r requirements.lock
	$(VPY) -m pip check
	$(VPY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# MathJax is served from the site itself (npm package `mathjax`), never from a CDN.
$(MATHJAX_DIR)/tex-chtml.js:
	rm -rf _build/npm && mkdir -p _build/npm $(MATHJAX_DIR)
	cd _build/npm && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null && tar xzf mathjax-$(MATHJAX_VERSION).tgz
	cp _build/npm/package/es5/tex-chtml.js $(MATHJAX_DIR)/
	mkdir -p $(MATHJAX_DIR)/output/chtml/fonts && cp -r _build/npm/package/es5/output/chtml/fonts/woff-v2 $(MATHJAX_DIR)/output/chtml/fonts/
	cp _build/npm/package/LICENSE $(MATHJAX_DIR)/LICENSE

# Chromium and its driver for the site test (Debian packages).
sysdeps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

# Build the site, executing every notebook.
book: setup
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going

# Build the site from the stored outputs (which `make test` has just re-executed and compared).
book-stored: setup
	mkdir -p _build
	sed 's/^  execute_notebooks: .*/  execute_notebooks: "off"/' _config.yml > _build/_config_stored.yml
	$(VENV)/bin/jupyter-book build . --config _build/_config_stored.yml --warningiserror --keep-going

test-py: setup
	$(VENV)/bin/pytest -q tests

NBVAL := $(VENV)/bin/pytest -q --nbval --nbval-current-env --nbval-sanitize-with book/nbval_sanitize.cfg \
	-p no:cacheprovider

test-nb: setup
	$(NBVAL) book

# The same comparison under the math kernels that differ most from a modern CPU's defaults: OpenBLAS's oldest
# x86-64 kernel (Prescott), torch's scalar ATen kernels, MKL limited to SSE4.2, one thread. Stored outputs were
# made with the defaults; they must not depend on the kernel (issue 10).
KERNEL_ENV := OPENBLAS_CORETYPE=Prescott ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 \
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1

# With one thread each, the chapters of this pass run NB_JOBS at a time (pytest-xdist; `--dist loadscope` keeps a
# notebook's cells in order in one worker, as nbval needs): on a 2-core machine two at a time took 420 s against
# 740 s one by one. (The default pass stays one by one: two notebooks at a time with all threads each had not
# finished after 18 minutes, against 9 one by one.) NB_JOBS=0 runs them one by one.
NB_JOBS ?= 2

test-nb-kernels: setup
	env $(KERNEL_ENV) $(NBVAL) -n $(NB_JOBS) --dist loadscope book

test-site: setup sysdeps book-stored
	$(VENV)/bin/pytest -q -p no:cacheprovider tests_site

# Every test: the package, the chapters (under two kernel configurations), and the built site in a headless browser.
test: test-py test-nb test-nb-kernels test-site

notebook: setup
	$(VENV)/bin/jupytext --sync book/_md/$(NB).md
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1800 book/$(NB).ipynb
	$(VENV)/bin/jupytext --sync book/$(NB).ipynb

clean:
	rm -rf _build
