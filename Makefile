# Two commands do all the set-up: `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
# The import tests need PyTorch. 2.13.0 is pinned because this project's machines
# hold its CPU wheel; elsewhere override, e.g. TORCH_SPEC="torch --index-url ...".
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_STAMP := $(VENV)/.torch-installed

.PHONY: demo test lint bench clean

$(STAMP): setup.py $(wildcard bin/zskt-tf-*)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

$(TORCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	touch $(TORCH_STAMP)

# make demo SEED=1 runs the demo with another seed.
SEED ?= 0
demo: $(STAMP)
	$(BIN)/zskt-tf-demo --seed=$(SEED) --output_dir=runs/demo/seed_$(SEED)

test: $(STAMP) $(TORCH_STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check zskt_tf bin/* tests bench scripts && $(BIN)/ruff format --check zskt_tf bin/* tests bench scripts

clean:
	rm -rf $(VENV) build *.egg-info
