# onnxfi: `make demo` and `make test` work on a fresh machine (they create .venv and install).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out
DEMO_MODEL ?= digits_cnn
DEMO_DATA ?= model_zoo/data/digits_eval.npz

.PHONY: install demo test lint typecheck clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	@mkdir -p $(OUT)
	$(PY) -m onnxfi inspect $(DEMO_MODEL) --weights
	@echo; echo "== one exact fault: exponent MSB (bit 30) of one weight of the second convolution =="
	$(PY) -m onnxfi inject $(DEMO_MODEL) --site features.3.weight --index 0,0,1,1 --bit 30 -o $(OUT)/demo_weight_exp.onnx
	$(PY) -m onnxfi run $(OUT)/demo_weight_exp.onnx --data $(DEMO_DATA)
	@echo; echo "== campaign: weight bit flips over every layer and bit, stratified, with 99% intervals =="
	$(PY) -m onnxfi analyze $(DEMO_MODEL) --faults 1600 --db $(OUT)/demo.db --overwrite --json $(OUT)/demo.json

lint: install
	$(VENV)/bin/ruff check onnxfi tests

typecheck: install
	$(VENV)/bin/mypy onnxfi

test: install lint typecheck
	$(VENV)/bin/pytest

clean:
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache

-include model_zoo/zoo.mk
