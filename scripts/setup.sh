#!/usr/bin/env bash
# Installs every build and test dependency of sherd from Debian's packages.
# Idempotent: packages already present are left alone; apt is only asked
# when something is missing. CUDA is optional and never installed here.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libgloo-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev libxxhash-dev libopenblas-dev
  python3
)
# Extra packages only the benchmarks and fixture generation need.
if [[ "${1:-}" == "--bench" ]]; then
  PKGS+=(iperf3 time python3-torch python3-matplotlib python3-venv)
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#PKGS[@]} packages present"
fi

# Benchmarks and anchors: the newest torch and deepspeed from PyPI, in .venv.
if [[ "${1:-}" == "--bench" ]]; then
  cd "$(dirname "$0")/.."
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q torch deepspeed ninja kubernetes-validate
fi
