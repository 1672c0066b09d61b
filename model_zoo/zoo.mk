# Model zoo targets; included from the top-level Makefile.
#   make zoo        rebuild every zoo model, eval subset and model_zoo/registry.json from scratch
#                   (creates .venv-zoo*, installs Debian's dataset-fashion-mnist if missing)
#   make zoo-test   check the committed zoo with onnxruntime only
ZOO_PYTHON ?= python3

.PHONY: zoo zoo-test
zoo:
	PYTHON=$(ZOO_PYTHON) bash model_zoo/build/build_all.sh

zoo-test:
	.venv/bin/python -m pytest -q tests/test_zoo.py
