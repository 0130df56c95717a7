#!/usr/bin/env bash
# Validates deploy/k8s/*.yaml against the Kubernetes schema (needs
# kubernetes-validate from .venv; skipped with a message when absent).
set -euo pipefail
cd "$(dirname "$0")/../.."
KV=${KV:-.venv/bin/kubernetes-validate}
if [[ ! -x $KV ]]; then
  echo "SKIP: kubernetes-validate not installed (scripts/setup.sh --bench)"
  exit 0
fi
"$KV" --strict deploy/k8s/*.yaml
