// Save and load throughput of one rank's shard, for comparison with a
// plain `dd ... conv=fsync` run on the same disk in the same shell command.
//
//   checkpoint_throughput <root> [slice_mib=256] [export.safetensors]
//
// slice_mib is the size of the fp32 master-param slice; the shard also holds
// the two Adam moments, so it is 3x that. The load is timed cold (the
// shard's pages dropped from the page cache with posix_fadvise after the
// fsync) and warm.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "common/aligned_buffer.h"
#include "server/checkpoint/directory.h"
#include "server/checkpoint/reader.h"
#include "server/checkpoint/snapshot_saver.h"
#include "server/checkpoint/tools.h"

namespace sherd {
namespace {

void DropCache(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

int Main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <root> [slice_mib] [export_file]\n",
                 argv[0]);
    return 2;
  }
  const std::string root = argv[1];
  const int64_t mib = argc > 2 ? std::atoll(argv[2]) : 256;
  const int64_t n = mib * (int64_t{1} << 20) / 4;
  ModelSpec spec{"bench", {{"w", {n}, DType::kFloat32, 0}}, {{"default"}}};
  Layout layout = *Layout::Build(spec.tensors, 1);
  AlignedFloats p, m, v;
  if (!p.Allocate(layout.total()) || !m.Allocate(layout.total()) ||
      !v.Allocate(layout.total())) {
    return 1;
  }
  for (int64_t i = 0; i < layout.total(); ++i) {
    p.data()[i] = static_cast<float>(i);
    m.data()[i] = 0.5f * i;
    v.data()[i] = 0.25f * i;
  }
  const double gb = ShardFileBytes(layout.total()) / 1e9;

  SnapshotSaver saver;
  auto dir = CreateTempCheckpointDir(root, 1);
  if (!dir.ok()) return 1;
  absl::Time t0 = absl::Now();
  absl::Status s = saver.Start(*dir, 0, 1, layout.Slice(0), 1, p.data(),
                               m.data(), v.data());
  const double copy_s = absl::ToDoubleSeconds(absl::Now() - t0);
  auto info = saver.Wait();
  if (!s.ok() || !info.ok()) return 1;
  auto manifest = BuildManifest(spec, 1, 1, {}, {*info});
  auto committed = CommitCheckpoint(root, *dir, *manifest);
  const double save_s = absl::ToDoubleSeconds(absl::Now() - t0);
  if (!committed.ok()) {
    std::fprintf(stderr, "%s\n", committed.status().ToString().c_str());
    return 1;
  }
  // A second snapshot reuses the saver's buffers: the pause a step sees
  // from the second save on.
  auto dir2 = CreateTempCheckpointDir(root, 2);
  if (!dir2.ok()) return 1;
  t0 = absl::Now();
  s = saver.Start(*dir2, 0, 1, layout.Slice(0), 2, p.data(), m.data(),
                  v.data());
  const double copy2_s = absl::ToDoubleSeconds(absl::Now() - t0);
  if (!s.ok() || !saver.Wait().ok() || !AbortCheckpoint(*dir2).ok()) return 1;
  auto ckpt = CheckpointReader::Open(*committed);
  if (!ckpt.ok()) return 1;
  double load_s[2];
  for (int warm = 0; warm < 2; ++warm) {
    if (!warm) DropCache(ckpt->shard_path(0));
    t0 = absl::Now();
    if (!ckpt->LoadSlice(layout, 0, p.data(), m.data(), v.data()).ok()) return 1;
    load_s[warm] = absl::ToDoubleSeconds(absl::Now() - t0);
  }
  t0 = absl::Now();
  if (!ckpt->Verify().ok()) return 1;
  const double verify_s = absl::ToDoubleSeconds(absl::Now() - t0);
  std::printf(
      "shard %.3f GB (slice %lld MiB x 3 arrays)\n"
      "  snapshot copy (Start returns) %.3f s first, %.3f s reused\n"
      "  save incl. fsync + commit     %.3f s  %.2f GB/s\n"
      "  load cold (fadvise dropped)   %.3f s  %.2f GB/s\n"
      "  load warm (page cache)        %.3f s  %.2f GB/s\n"
      "  verify warm                   %.3f s  %.2f GB/s\n",
      gb, static_cast<long long>(mib), copy_s, copy2_s, save_s, gb / save_s, load_s[0],
      gb / load_s[0], load_s[1], gb / load_s[1], verify_s, gb / verify_s);
  if (argc > 3) {
    t0 = absl::Now();
    auto exported = ExportSafetensors(*committed, argv[3]);
    if (!exported.ok()) return 1;
    std::printf("  export safetensors            %.3f s  %.2f GB/s\n",
                absl::ToDoubleSeconds(absl::Now() - t0),
                exported->bytes / 1e9 /
                    absl::ToDoubleSeconds(absl::Now() - t0));
  }
  return 0;
}

}  // namespace
}  // namespace sherd

int main(int argc, char** argv) { return sherd::Main(argc, argv); }
