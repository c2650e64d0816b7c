# Two commands for a fresh clone: `make demo` runs the workflow demo, `make test` runs the tests.
# Two pinned environments, since the two stacks cannot share one (huggingface_hub >= 1 for transformers 5, < 1 for
# PaddleNLP 2.8.1); each is created and installed the first time a target needs it:
#   .venv          the classic stack, constraints.txt: PaddleNLP 2.8.1 + transformers 4.57 (ERNIE 3.0), pytorch-lightning,
#                  and the lint, type and docs tools
#   .venv-current  the current stack, constraints-current.txt: transformers 5, PaddleFormers 1.2, PEFT, `lightning`
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.xfreeze-installed
CURRENT ?= .venv-current
PYC     := $(CURRENT)/bin/python
CSTAMP  := $(CURRENT)/.xfreeze-installed

.PHONY: demo test test-fast test-current lint docs test-thorough examples bench lock lock-current clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all,test]' setuptools
	touch $(STAMP)

# One resolver pass installs the whole pinned set (every pin is consistent with what the packages declare); then
# paddlecodec's top-level torchcodec/ folder is deleted, which pip cannot express (reason in constraints-current.txt).
$(CSTAMP): pyproject.toml constraints-current.txt
	$(PYTHON) -m venv $(CURRENT)
	$(PYC) -m pip install -q --upgrade pip
	$(PYC) -m pip install -q -c constraints-current.txt -e '.[llm,test-core]'
	site=$$($(PYC) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
		if grep -qs '^torchcodec/' $$site/paddlecodec-*.dist-info/RECORD; then rm -rf $$site/torchcodec; fi
	$(PYC) -c 'import torch, peft, paddleformers, lightning, xfreeze'
	touch $(CSTAMP)

demo: $(CSTAMP)
	$(PYC) examples/demo.py

# `make test` (what CI runs): lint, type check and the docs build, then in the classic environment the fast tier and
# the slow tier (examples, wheel build, real architectures, distributed runs), then in the current environment the
# core fast tier again plus every test marked current_stack, slow ones included. A test marked for the other stack
# is deselected (tests/conftest.py); one whose package is missing from its own stack's environment fails.
# `make test-fast` (classic) and `make test-current` are the quick loops while editing.
test: lint docs $(STAMP) $(CSTAMP)
	$(PY) -m pytest -q -m "not slow"
	$(PY) -m pytest -q -m "slow and not sweep"
	$(PYC) -m pytest -q -m "(not slow or current_stack) and not sweep"

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-current: $(CSTAMP)
	$(PYC) -m pytest -q -m "(not slow or current_stack) and not sweep"

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

# Rewrite the resolved part of a constraints file from its environment (after changing a direct pin). Names are
# matched whole (mypy does not hide mypy_extensions), with - _ . alike.
define LOCK
sed -n '1,/^# Everything else/p' $(2) > $(2).tmp
$(1) -m pip freeze --exclude-editable | grep -v -i -E '^(xfreeze|pip|setuptools|wheel)==' | \
	grep -v -i -E -f <(sed -n '/^[A-Za-z]/s/==.*//p' $(2).tmp | sed 's/[-_.]/[-_.]/g; s/.*/^&==/') >> $(2).tmp
mv $(2).tmp $(2)
endef

lock: $(STAMP)
	$(call LOCK,$(PY),constraints.txt)

lock-current: $(CSTAMP)
	$(call LOCK,$(PYC),constraints-current.txt)

clean:
	rm -rf $(VENV) $(CURRENT) build site *.egg-info
