# Model zoo targets; included from the top-level Makefile (`-include model_zoo/zoo.mk`).
#   make zoo        rebuild every zoo model, eval subset and model_zoo/registry.json from scratch
#                   (creates .venv-zoo, .venv-zoo-paddle, .venv-zoo-tf; installs Debian's
#                   dataset-fashion-mnist if missing). About 20 minutes on 2 cores.
#   make zoo-test   check the committed zoo with onnxruntime only
ZOO_PYTHON ?= $(or $(PYTHON),python3)
ZOO_TEST_PY ?= $(or $(PY),.venv/bin/python)

.PHONY: zoo zoo-test
zoo:
	PYTHON=$(ZOO_PYTHON) bash model_zoo/build/build_all.sh

zoo-test:
	$(ZOO_TEST_PY) -m pytest -q tests/test_zoo.py
