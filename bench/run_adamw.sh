#!/bin/sh
# Runs the CPU AdamW benchmark and the CPU anchors in one go, so the ratios
# in the report come from the same machine state (see BENCHMARKS.md).
#
#   bench/run_adamw.sh [build_dir] [params]     (defaults: build, 32 Mi)
#
# Build first: cmake --build <build_dir> -j1 --target adamw_bench
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-"$here/../build"}
params=${2:-33554432}
anchors=${SHERD_ANCHORS:-"$here/../../shared/anchors"}

"$build/bench/adamw_bench" --params="$params" --benchmark_min_time=0.5
py="$here/../.venv/bin/python"; [ -x "$py" ] || py=/usr/bin/python3
"$py" "$anchors/cpu_anchor.py" "$params"
