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
	$(PY) -m onnxfi inspect $(DEMO_MODEL)
	$(PY) -m onnxfi run $(DEMO_MODEL) --data $(DEMO_DATA)
	@echo; echo "== flip exponent MSB (bit 30) of one weight of the second convolution =="
	$(PY) -m onnxfi inject $(DEMO_MODEL) --site features.3.weight --index 0,0,1,1 --bit 30 -o $(OUT)/demo_weight_exp.onnx
	$(PY) -m onnxfi run $(OUT)/demo_weight_exp.onnx --data $(DEMO_DATA)
	@echo; echo "== flip the sign bit (31) of the same weight =="
	$(PY) -m onnxfi inject $(DEMO_MODEL) --site features.3.weight --index 0,0,1,1 --bit 31 -o $(OUT)/demo_weight_sign.onnx
	$(PY) -m onnxfi run $(OUT)/demo_weight_sign.onnx --data $(DEMO_DATA)
	@echo; echo "== flip bit 30 of one activation after the first ReLU, in every image (fault node) =="
	$(PY) -m onnxfi inject $(DEMO_MODEL) --site /features/features.2/Relu_output_0 --index 0,3,3 --bit 30 -o $(OUT)/demo_act_exp.onnx --data $(DEMO_DATA)
	$(PY) -m onnxfi run $(OUT)/demo_act_exp.onnx --data $(DEMO_DATA)

lint: install
	$(VENV)/bin/ruff check onnxfi tests bench

typecheck: install
	$(VENV)/bin/mypy onnxfi

test: install lint typecheck
	$(VENV)/bin/pytest

clean:
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache

-include model_zoo/zoo.mk
