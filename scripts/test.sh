#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite; ctest's summary ends the
# output. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
JOBS=${JOBS:-2}
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$JOBS"
cd build
ctest --output-on-failure -j"$JOBS" --timeout 300
