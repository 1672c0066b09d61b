#!/usr/bin/env bash
# Rebuild every model, eval subset and registry.json of the onnxfi model zoo from scratch.
# Usage (from the repository root): make zoo   (or: bash model_zoo/build/build_all.sh)
# Creates .venv-zoo, .venv-zoo-paddle and .venv-zoo-tf if missing, installs
# Debian's dataset-fashion-mnist if missing, then runs the build scripts in order.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
ZOO=model_zoo
BUILD="$ZOO/build"
TIMINGS="$BUILD/.cache/timings.tsv"
export PYTHONHASHSEED=0 PIP_DISABLE_PIP_VERSION_CHECK=1

mkdir -p "$BUILD/.cache" "$ZOO/data"
: >"$TIMINGS"
T_ALL=$(date +%s)

step() {  # step LABEL COMMAND...
    local label="$1" t0 t1
    shift
    echo "==> $label"
    t0=$(date +%s)
    "$@"
    t1=$(date +%s)
    printf '%s\t%s\n' "$label" "$((t1 - t0))" | tee -a "$TIMINGS"
}

make_venv() {  # make_venv DIR REQUIREMENTS
    local dir="$1" req="$2"
    [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
    # torch==2.13.0 comes from the machine's local CPU wheel; install it first and alone so
    # that nothing else pulls a CUDA build from the index.
    if grep -q '^torch==' "$req"; then
        "$dir/bin/pip" install -q "$(grep '^torch==' "$req")"
    fi
    "$dir/bin/pip" install -q -r "$req"
}

fashion_data() {
    if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -q
        $sudo apt-get install -y -q dataset-fashion-mnist
    fi
    dpkg -L dataset-fashion-mnist | grep -q 'train-images-idx3-ubyte'
}

step "venv .venv-zoo" make_venv .venv-zoo "$ZOO/requirements-zoo.txt"
step "venv .venv-zoo-paddle" make_venv .venv-zoo-paddle "$ZOO/requirements-zoo-paddle.txt"
step "venv .venv-zoo-tf" make_venv .venv-zoo-tf "$ZOO/requirements-zoo-tf.txt"
step "apt dataset-fashion-mnist" fashion_data

# from scratch: drop every generated artefact (and stale entries) first
rm -f "$ZOO"/*.onnx "$ZOO"/data/*.npz "$ZOO/registry.json" "$BUILD"/.cache/fashion_*

step "digits_cnn" .venv-zoo/bin/python "$BUILD/digits_cnn.py"
step "digits_mlp_skl" .venv-zoo/bin/python "$BUILD/digits_mlp_skl.py"
step "digits_cnn_paddle" .venv-zoo-paddle/bin/python "$BUILD/digits_paddle.py"
step "digits_cnn_keras" .venv-zoo-tf/bin/python "$BUILD/digits_keras.py"
step "digits_vit (+fused, int4)" .venv-zoo/bin/python "$BUILD/digits_vit.py"
step "fashion_cnn (+bnfold, pruned50, pruned90)" .venv-zoo/bin/python "$BUILD/fashion_cnn.py"
step "fashion_cnn fp16 / int8 variants" .venv-zoo/bin/python "$BUILD/fashion_variants.py"
step "fashion_seg" .venv-zoo/bin/python "$BUILD/fashion_seg.py"
step "shapes_det" .venv-zoo/bin/python "$BUILD/shapes_det.py"

T_END=$(date +%s)
printf '%s\t%s\n' "total" "$((T_END - T_ALL))" | tee -a "$TIMINGS"
echo "==> zoo rebuilt; timings in $TIMINGS"
.venv-zoo/bin/python - <<'EOF'
import json
reg = json.load(open("model_zoo/registry.json"))["models"]
for name, e in reg.items():
    print(f"  {name:24s} {e['metric']:9s} {e['value']:.4f}  {e['size_bytes'] / 1024:8.1f} KiB")
EOF
