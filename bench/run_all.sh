#!/usr/bin/env bash
# Builds the benchmarks (Release) and runs them all beside their anchors;
# writes bench/RESULTS.md and bench/step_chart.png. Takes ~15 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --bench
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 --target adamw_bench step_bench dataplane_bench sherd-server
/usr/bin/python3 bench/run_all.py
