# Two commands on a fresh machine:  `make demo`  (set up, train and interpret on the built-in data)  and  `make test`.
# The virtual environment gets torch first (TORCH, a CPU build by default), then this package and its dependencies,
# so pip never replaces it with the multi-GB CUDA build. GPU users: make setup TORCH="torch --index-url <CUDA wheel index>".

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
DEMO ?= ham
# another classifier (patchnet) is also trained by the demo and compared with DenseNet121: make demo DEMO=chest CLASSIFIER=patchnet
CLASSIFIER ?= densenet121
# 1: COIN's counterfactual generator is also trained and its explanations compared: make demo DEMO=chest COUNTERFACTUAL=1
COUNTERFACTUAL ?= 0
BIN := $(VENV)/bin

.PHONY: setup demo test benchmark clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" CLASSIFIER=$(CLASSIFIER) COUNTERFACTUAL=$(COUNTERFACTUAL) bash scripts/demo.sh $(DEMO)

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

benchmark: setup
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) bundles/*/data bundles/*/models/*.pt bundles/*/models/*/ bundles/*/runs bundles/*/calibrate bundles/*/interpret bundles/*/inference bundles/*/models/review_*.json bundles/*/datalists
