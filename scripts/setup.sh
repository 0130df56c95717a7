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
  python3 python3-venv python3-dev
  iproute2  # the two-host tests: network namespaces, veth pairs, a bridge
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

# The project's virtual environment (.venv): torch (2.x), the Python
# package's build tools (nanobind, scikit-build-core) and pytest, from PyPI.
# scripts/build.sh installs sherd itself into it.
cd "$(dirname "$0")/.."
[[ -x .venv/bin/python ]] || python3 -m venv .venv
PY_PKGS=("torch>=2.1" "nanobind>=2.0" "scikit-build-core>=0.10" pytest numpy)
if ! .venv/bin/python -c "import torch, nanobind, scikit_build_core, pytest, numpy" 2>/dev/null; then
  echo "setup: installing ${PY_PKGS[*]} into .venv (torch brings a few GB)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "${PY_PKGS[@]}"
else
  echo "setup: .venv has torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
fi

# Benchmarks and anchors: deepspeed (its CPU Adam), ninja to build it.
if [[ "${1:-}" == "--bench" ]]; then
  .venv/bin/python -m pip install -q deepspeed ninja kubernetes-validate
fi
