# Two commands do all the set-up: `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): setup.py $(wildcard bin/zskt-tf-*)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/zskt-tf-demo --output_dir=runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check zskt_tf bin/* tests bench scripts && $(BIN)/ruff format --check zskt_tf bin/* tests bench scripts

clean:
	rm -rf $(VENV) build *.egg-info
