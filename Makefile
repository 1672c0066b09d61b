# onnxfi: `make demo` and `make test` work on a fresh machine (they create .venv and install).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out
DEMO_MODEL ?= digits_cnn
DEMO_DATA ?= model_zoo/data/digits_eval.npz

# ONNX Runtime extra: cpu (onnxruntime) or gpu (onnxruntime-gpu, NVIDIA); exactly one is installed. Defaults to
# the one .venv was made with: `make install RUNTIME=gpu` switches (uninstalling the other first).
RUNTIME ?= $(if $(wildcard $(VENV)/.installed-gpu),gpu,cpu)
OTHER_RUNTIME := $(if $(filter gpu,$(RUNTIME)),onnxruntime,onnxruntime-gpu)
STAMP := $(VENV)/.installed-$(RUNTIME)

.PHONY: install demo test lint typecheck clean bench sysdeps check-install fuzz

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	rm -f $(VENV)/.installed-*
	$(PY) -m pip uninstall -q -y $(OTHER_RUNTIME) 2>/dev/null || true
	$(PY) -m pip install -q -e '.[$(RUNTIME),dev]'
	touch $@

install: $(STAMP)

demo: install
	@mkdir -p $(OUT)
	$(PY) -m onnxfi inspect $(DEMO_MODEL) --weights
	@echo; echo "== one exact fault: exponent MSB (bit 30) of one weight of the second convolution =="
	$(PY) -m onnxfi inject $(DEMO_MODEL) --site features.3.weight --index 0,0,1,1 --bit 30 -o $(OUT)/demo_weight_exp.onnx
	$(PY) -m onnxfi run $(OUT)/demo_weight_exp.onnx --data $(DEMO_DATA)
	@echo; echo "== campaign: weight bit flips over every layer and bit, stratified, with 99% intervals =="
	$(PY) -m onnxfi analyze $(DEMO_MODEL) --faults 1600 --db $(OUT)/demo.db --overwrite --json $(OUT)/demo.json --html $(OUT)/demo.html

lint: install
	$(VENV)/bin/ruff check onnxfi tests bench

typecheck: install
	$(VENV)/bin/mypy onnxfi

# System packages the tests need: headless Chromium for the HTML report test. Installed from Debian's
# packages when running as root (as CI does); otherwise the README names it and the report test says so.
sysdeps:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium (Debian package) for the HTML report test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else echo "note: tests/test_report.py needs Chromium (Debian: sudo apt-get install chromium)"; fi

test: install sysdeps lint typecheck
	$(VENV)/bin/pytest

clean:
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache

# A new user's install (issue 15): a fresh venv in a temp folder, `pip install .` from a copy of this checkout,
# then every command of the README's quick tour as written, from an empty temp folder; also checks that the
# plain install names the missing runtime in one line and that `.[gpu]` would install onnxruntime-gpu alone.
# Not part of `make test`: it installs from the package index (about 1.5 min on 2 cores with a warm pip cache).
check-install:
	PYTHON=$(PYTHON) bash scripts/check_install.sh

# Fuzzing (issue 18): mutated models, data, gate configs, plans and stores through every command; each case in
# a forked child under a 4 GiB address-space limit and a time limit. `make test` runs a 300-case slice
# (tests/test_fuzz_slice.py); this is the long run (about 12 minutes on 2 cores). FUZZ_CASES=N to change it.
FUZZ_CASES ?= 5000
fuzz: install
	$(VENV)/bin/python scripts/fuzz.py --cases $(FUZZ_CASES) --seed 0 --out $(OUT)/fuzz

# Benchmark (issue 5): one weight campaign plan run by naive rebuilds, onnxfi and PyTorchFI; see bench/README.md.
# torch and pytorchfi live in .venv-bench so .venv stays small; torch==2.13.0 is the local CPU wheel,
# installed first and alone. About 20-25 minutes on 2 quiet cores.
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_DIGITS ?= --faults 1088
# resnet18_fused: BatchNorm folded into Conv as exports usually ship it (42 weight sites); resnet18 keeps
# BatchNorm separate (102 sites, longer).
BENCH_RESNET_MODEL ?= resnet18_fused
BENCH_RESNET ?= --faults 336 --baseline-faults 42 --modes naive,suffix,suffix-noverify,pytorchfi
# Transient faults (issue 16): one plan of single-inference activation bit flips, naive single-image,
# onnxfi batched and one at a time, PyTorchFI's batched neuron injection, persistent; see bench/README.md.
BENCH_TRANSIENT_DIGITS ?= --faults 4096 --baseline-faults 64 --check-faults 256 --persistent-faults 200
BENCH_TRANSIENT_RESNET ?= --faults 1280 --baseline-faults 16 --check-faults 24 --persistent-faults 24 \
	--one-by-one-faults 64

# Sparse campaigns and time to answer (issue 17): whole `onnxfi analyze` commands against an independent
# naive injector (public PaddleOCR models from the rapidocr_onnxruntime wheel, installed with --no-deps:
# only its .onnx files are used; the zoo at 100 and 1,000 faults, naive extrapolated beyond 300), and the
# time to a +-1%/99% SDC-1 answer against PyTorchFI. These add about 8 minutes. BENCH_SPARSE_ZOO="--faults
# 100,1000,10000 --naive-limit 300" (no --models: every zoo model) is the issue's full sweep (hours: fashion_seg
# costs about 0.6 s per fault).
BENCH_SPARSE_ZOO ?= --models digits_cnn,digits_cnn_paddle,digits_mlp_skl,fashion_cnn,fashion_cnn_int8_qdq \
	--faults 100,1000 --naive-limit 300

$(BENCH_VENV)/.installed: bench/requirements.txt bench/requirements-public.txt pyproject.toml
	[ -x $(BENCH_PY) ] || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -m pip install -q "$$(grep '^torch==' bench/requirements.txt)"
	$(BENCH_PY) -m pip install -q -r bench/requirements.txt -e .
	$(BENCH_PY) -m pip install -q --no-deps "$$(grep '^rapidocr_onnxruntime==' bench/requirements-public.txt)"
	touch $@

bench: $(BENCH_VENV)/.installed
	@mkdir -p $(OUT)/bench
	$(BENCH_PY) bench/build_resnet18.py
	$(BENCH_PY) bench/bench_campaign.py --model digits_cnn $(BENCH_DIGITS) --json $(OUT)/bench/digits_cnn.json
	$(BENCH_PY) bench/bench_campaign.py --model $(BENCH_RESNET_MODEL) $(BENCH_RESNET) --json $(OUT)/bench/$(BENCH_RESNET_MODEL).json
	$(BENCH_PY) bench/bench_transient.py --model digits_cnn $(BENCH_TRANSIENT_DIGITS) --json $(OUT)/bench/transient_digits_cnn.json
	$(BENCH_PY) bench/bench_transient.py --model $(BENCH_RESNET_MODEL) $(BENCH_TRANSIENT_RESNET) \
		--json $(OUT)/bench/transient_$(BENCH_RESNET_MODEL).json
	$(BENCH_PY) bench/bench_sparse.py --public rapidocr-cls --public rapidocr-det --faults 400 --json $(OUT)/bench/sparse_public.json
	$(BENCH_PY) bench/bench_sparse.py --zoo $(BENCH_SPARSE_ZOO) --json $(OUT)/bench/sparse_zoo.json
	$(BENCH_PY) bench/bench_answer.py --model digits_cnn --json $(OUT)/bench/answer_digits_cnn.json
	$(BENCH_PY) bench/bench_critical.py --model digits_cnn --elements 16 --json $(OUT)/bench/critical_digits_cnn.json
	$(BENCH_PY) bench/bench_critical.py --model digits_cnn --sites '^classifier\.2\.weight$$' --elements 0 \
		--json $(OUT)/bench/critical_digits_cnn_classifier.json

-include model_zoo/zoo.mk
