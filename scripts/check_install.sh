#!/usr/bin/env bash
# A new user's install, checked end to end (issue 15); `make check-install` runs it.
#
#  1. copies this checkout (tracked files and untracked ones git does not ignore: a fresh clone plus the work
#     in progress) to a temp folder and makes a fresh venv there;
#  2. `pip install .` (no extra): onnxfi installs without any ONNX Runtime, and a command says in one line
#     which pip command to run (exit 2, no traceback);
#  3. `pip install --dry-run '.[gpu]'` in that venv: the resolver would install onnxruntime-gpu and not onnxruntime;
#  4. `pip install '.[cpu]'` (the README's install line): exactly one runtime, onnxruntime;
#  5. every command of the README's quick tour, as written, from an empty temp folder (not the checkout), each
#     one failing the check on a nonzero exit.
#
# Python runs from $TMP/work, never from the checkout (whose onnxfi/ would shadow the installed one).
# Needs the package index (pip downloads onnxfi's dependencies). KEEP=1 keeps the temp folder.
set -euo pipefail

PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/onnxfi-check-install.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then echo "keeping $TMP"; else trap 'rm -rf "$TMP"' EXIT; fi
START=$SECONDS

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'check-install: FAILED: %s\n' "$*" >&2; exit 1; }

step "copy of the checkout in $TMP/src"
mkdir -p "$TMP/src" "$TMP/work"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
        | (cd "$ROOT" && xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' _) \
        | tar -C "$ROOT" --null -T - -cf - | tar -C "$TMP/src" -xf -
else
    tar -C "$ROOT" --exclude='./.venv*' --exclude='./out' --exclude='./build' -cf - . | tar -C "$TMP/src" -xf -
fi

step "fresh venv ($("$PYTHON" --version))"
"$PYTHON" -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
pip_() {  # quiet pip; its output is shown (less one local-index warning) and its exit status kept
    local rc=0
    "$VPY" -m pip --disable-pip-version-check -q "$@" >"$TMP/pip.log" 2>&1 || rc=$?
    grep -v "is ignored: it is neither a file nor a directory" "$TMP/pip.log" || true
    [ "$rc" = 0 ] || fail "pip $* exited $rc"
}
runtimes() { "$VPY" -m pip list --format=freeze 2>/dev/null | grep -i -E '^onnxruntime(-gpu)?==' | cut -d= -f1 | sort | tr '\n' ' '; }

step "pip install .   (no extra: no ONNX Runtime)"
(cd "$TMP/src" && pip_ install .)
(cd "$TMP/work" && "$VPY" -c 'import onnxfi') || fail "onnxfi is not importable after pip install ."
[ -z "$(runtimes)" ] || fail "pip install . installed a runtime: $(runtimes)"
set +e
(cd "$TMP/work" && "$TMP/venv/bin/onnxfi" zoo list) >"$TMP/noruntime.out" 2>"$TMP/noruntime.err"
rc=$?
set -e
cat "$TMP/noruntime.err"
[ "$rc" = 2 ] || fail "without a runtime 'onnxfi zoo list' exited $rc (expected 2)"
grep -q "pip install 'onnxfi\[cpu\]'" "$TMP/noruntime.err" || fail "the missing-runtime message does not name pip install 'onnxfi[cpu]'"
! grep -q Traceback "$TMP/noruntime.err" || fail "the missing-runtime message is a traceback"
[ "$(wc -l <"$TMP/noruntime.err")" = 1 ] || fail "the missing-runtime message is not one line"

step "pip install --dry-run '.[gpu]'   (what the resolver would install)"
(cd "$TMP/src" && pip_ install --dry-run --report "$TMP/gpu.json" '.[gpu]')
gpu=$("$VPY" -c 'import json, sys
names = {i["metadata"]["name"].lower() for i in json.load(open(sys.argv[1]))["install"]}
print(" ".join(sorted(n for n in names if n.startswith("onnxruntime"))))' "$TMP/gpu.json")
echo "runtimes it would install: $gpu"
[ "$gpu" = "onnxruntime-gpu" ] || fail "'.[gpu]' would install: '$gpu' (expected onnxruntime-gpu alone)"

step "pip install '.[cpu]'"
(cd "$TMP/src" && pip_ install '.[cpu]')
echo "runtimes installed: $(runtimes)"
[ "$(runtimes)" = "onnxruntime " ] || fail "after '.[cpu]' the runtimes are '$(runtimes)' (expected onnxruntime alone)"
(cd "$TMP/work" && "$VPY" -c 'import onnxfi.zoo as z, sys; p = z.zoo_dir(); print("zoo:", p)
sys.exit("site-packages" not in str(p))') || fail "the zoo is not read from the installed package"

step "README quick tour, as written, in $TMP/work"
awk '/^## Quick tour/ {tour = 1; next}
     tour && /^```/ {if (inblock) exit; inblock = 1; next}
     inblock' "$ROOT/README.md" >"$TMP/tour.sh"
n=0
while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    n=$((n + 1))
    printf '\n$ %s\n' "$line"
    t0=$SECONDS
    (cd "$TMP/work" && PATH="$TMP/venv/bin:$PATH" bash -e -o pipefail -c "$line") </dev/null \
        || fail "quick tour command exited $?: $line"
    echo "[ok, $((SECONDS - t0)) s]"
done <"$TMP/tour.sh"
[ "$n" -ge 5 ] || fail "found only $n commands in the README's quick tour"

step "check-install passed: $n quick-tour commands, $((SECONDS - START)) s in all"
