# Each target creates .venv itself (once; re-run only when pyproject.toml changes).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo_out

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/seminft-data presets export --out $(DEMO)/presets
	@echo "demo outputs are in $(DEMO)/ (open $(DEMO)/presets/contact_sheet.png)"

test: setup
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) benchmarks/bench_lut.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
