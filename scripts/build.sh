#!/usr/bin/env bash
# Builds everything into build/ and installs the Python package into .venv:
# `pip install` of this repository runs its CMake build (scikit-build-core)
# with build/ as the build tree, so one build makes the native module, the
# sherd-server and sherdctl the wheel carries, the C++ tests and the
# benchmarks. Incremental: a second run rebuilds only what changed.
#
#   scripts/build.sh            (after scripts/setup.sh)
#   JOBS=N scripts/build.sh     build parallelism (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
export CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-2}
export CMAKE_GENERATOR="Unix Makefiles"
echo "== building sherd (C++ core, tests, Python package) into build/; the log is build/pip-install.log"
mkdir -p build
set +e
.venv/bin/python -m pip install --no-build-isolation --no-deps -v \
  -Cbuild-dir=build \
  -Ccmake.define.SHERD_BUILD_TESTS=ON -Ccmake.define.SHERD_BUILD_BENCH=ON \
  . >build/pip-install.log 2>&1 &
pid=$!
# A progress line from CMake's percentages while it builds.
while kill -0 "$pid" 2>/dev/null; do
  sleep 10
  pct=$(grep -oE '^ *\[ *[0-9]+%\]' build/pip-install.log | tail -1 | tr -d '[] ')
  echo "   building... ${pct:-configuring}"
done
wait "$pid"
rc=$?
set -e
if ((rc != 0)); then
  echo "== build failed (exit $rc); the end of build/pip-install.log:"
  tail -n 60 build/pip-install.log
  exit "$rc"
fi
echo "== built; installed: $(.venv/bin/python -c 'import sherd; print("sherd", sherd.__version__, "at", sherd.__file__)')"
