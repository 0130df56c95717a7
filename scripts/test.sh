#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite; ctest's summary ends the
# output. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
JOBS=${JOBS:-2}
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$JOBS"

# Address + undefined-behaviour sanitizers on a chosen subset: the code that
# does pointer arithmetic over flat buffers and runs threads (layout, step
# pipeline, optimizer, collectives, checkpoint files), and three multi-process
# suites whose sherd-server and sherdctl are the sanitized builds (real
# servers stepping, saving, restoring and losing peers). SHERD_SKIP_ASAN=1
# skips.
if [[ "${SHERD_SKIP_ASAN:-0}" != 1 ]]; then
  ASAN_TESTS=(layout_test step_pipeline_test collective_test checkpoint_test adamw_test
              device_state_test shm_names_test cluster_test fault_test
              checkpoint_integration_test)
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHERD_SANITIZE=ON \
    -DSHERD_DISABLE_CUDA=ON -DSHERD_BUILD_BENCH=OFF >/dev/null
  cmake --build build-asan -j"$JOBS" --target "${ASAN_TESTS[@]}"
  for t in "${ASAN_TESTS[@]}"; do
    bin=$(find build-asan/tests -name "$t" -type f -perm -u+x | head -1)
    echo "== sanitizers: $t"
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 "$bin" --gtest_brief=1
  done
fi

cd build
set +e
ctest --output-on-failure -j"$JOBS" --timeout 300 2>&1 | tee ctest.log
rc=${PIPESTATUS[0]}
set -e
# ctest lists the skipped tests (GPU tests on a machine without one) after
# its summary; repeat the summary so the output ends with it.
if grep -q "The following tests did not run" ctest.log; then
  echo
  grep -E "^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+" ctest.log | tail -1
fi
exit "$rc"
