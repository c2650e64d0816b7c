# Two commands for a fresh clone: `make demo` runs the workflow demo, `make test` runs the tests.
# Both create .venv/ and install the pinned set (constraints.txt) the first time.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.xfreeze-installed

.PHONY: demo test test-fast lint docs test-thorough examples bench lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all,test]' setuptools
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# `make test` (what CI runs): lint, type check and the docs build, then the fast tier, then the slow tier (examples,
# wheel build, real architectures, distributed runs). `make test-fast` is the quick loop while editing.
test: lint docs $(STAMP)
	$(PY) -m pytest -q -m "not slow"
	$(PY) -m pytest -q -m "slow and not sweep"

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# ruff format also formats the python blocks of README.md and docs/*.md, so the recipes read like the code.
lint: $(STAMP)
	$(VENV)/bin/ruff check xfreeze backends tests bench examples docs
	$(VENV)/bin/ruff format --check xfreeze backends tests bench examples docs README.md
	$(VENV)/bin/mypy

# The documentation site, built strictly (a broken link or anchor, a page left out of the nav, an API name that does
# not resolve: each fails) into site/ (ignored). The pages' python blocks run in tests/product/test_docs.py.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

test-thorough: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -q -m "not sweep"
	$(PY) -m pytest -q -m sweep

examples: $(STAMP)
	for b in torch paddle; do $(PY) examples/resnet_transfer.py --backend $$b && $(PY) examples/ernie_classify.py --backend $$b || exit 1; done

bench: $(STAMP)
	$(PY) bench/scale.py
	$(PY) bench/ema.py
	$(PY) bench/train_step.py
	$(PY) bench/convert.py
	$(PY) bench/delta.py
	$(PY) bench/rewrap.py

# Rewrite the resolved part of constraints.txt from the current environment (after changing a direct pin). Names
# are matched whole (mypy does not hide mypy_extensions), with - _ . alike.
lock: $(STAMP)
	sed -n '1,/^# Everything else/p' constraints.txt > constraints.tmp
	$(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(xfreeze|pip|setuptools|wheel)==' | \
		grep -v -i -E -f <(sed -n '/^[A-Za-z]/s/==.*//p' constraints.tmp | sed 's/[-_.]/[-_.]/g; s/.*/^&==/') \
		>> constraints.tmp
	mv constraints.tmp constraints.txt

clean:
	rm -rf $(VENV) build site *.egg-info
