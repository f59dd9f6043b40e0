# Two commands do all the set-up: `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
# The import tests need PyTorch. 2.13.0 is pinned because this project's machines
# hold its CPU wheel; elsewhere override, e.g. TORCH_SPEC="torch --index-url ...".
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
# The demo needs the package alone; the tests add their tools (and PyTorch) on top.
BASE_STAMP := $(VENV)/.installed-base
STAMP := $(VENV)/.installed
TORCH_STAMP := $(VENV)/.torch-installed

.PHONY: demo test lint bench clean

$(BASE_STAMP): setup.py $(wildcard bin/zskt-tf-*)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e .
	touch $(BASE_STAMP)

$(STAMP): $(BASE_STAMP)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

$(TORCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	touch $(TORCH_STAMP)

# make demo SEED=1 runs the demo with another seed.
SEED ?= 0
demo: $(BASE_STAMP)
	$(BIN)/zskt-tf-demo --seed=$(SEED) --output_dir=runs/demo/seed_$(SEED)

test: $(STAMP) $(TORCH_STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python -m pytest -q -n 2 --dist loadfile tests

lint: $(BASE_STAMP)
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check zskt_tf bin/* tests bench scripts && $(BIN)/ruff format --check zskt_tf bin/* tests bench scripts

clean:
	rm -rf $(VENV) build *.egg-info
