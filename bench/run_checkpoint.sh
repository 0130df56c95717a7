#!/usr/bin/env bash
# Checkpoint save/load throughput of one rank's shard against a plain
# sequential write and read of the same bytes on the same disk, in one
# command (issue: at least 80% of it).
#   bench/run_checkpoint.sh [slice_mib] [dir]     (defaults: 256, a temp dir in /tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-256}
DIR=${2:-$(mktemp -d /tmp/sherd-ckpt-bench.XXXXXX)}
trap 'rm -rf "$DIR"' EXIT
BYTES=$((MIB * 3))   # the shard holds params + two moments
W=$( { /usr/bin/time -f %e dd if=/dev/zero of="$DIR/dd.bin" bs=4M count=$((BYTES / 4)) conv=fsync status=none; } 2>&1 )
sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || python3 -c "import os; fd=os.open('$DIR/dd.bin', os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)"
R=$( { /usr/bin/time -f %e dd if="$DIR/dd.bin" of=/dev/null bs=4M status=none; } 2>&1 )
rm -f "$DIR/dd.bin"
OUT=$(build/tests/checkpoint/checkpoint_throughput "$DIR" "$MIB")
echo "$OUT"
python3 - "$BYTES" "$W" "$R" "$OUT" <<'PYEOF'
import re, sys
mib, w, r, out = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
gb = mib * 2**20 / 1e9
save = float(re.search(r"save incl.*?([\d.]+) GB/s", out).group(1))
load = float(re.search(r"load cold.*?([\d.]+) GB/s", out).group(1))
print(f"dd write+fsync {gb / w:.2f} GB/s, dd read (cold) {gb / r:.2f} GB/s")
print(f"save {save:.2f} GB/s = {100 * save / (gb / w):.0f}% of dd write; load {load:.2f} GB/s = {100 * load / (gb / r):.0f}% of dd read")
PYEOF
