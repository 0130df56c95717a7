#include <cstring>
#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/shm_region.h"
#include "server/collective/local/factory.h"

namespace sherd {
namespace {

class LocalShmCollective final : public Collective {
 public:
  LocalShmCollective(std::unique_ptr<Collective> inner, std::shared_ptr<KvStore> store,
                     LocalShmOptions options)
      : inner_(std::move(inner)), store_(store), options_(std::move(options)) {}

  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  absl::Status AllReduce(std::span<double> v) override { return inner_->AllReduce(v); }
  absl::Status Barrier() override { return inner_->Barrier(); }

  void AdviseSharedBuffer(const std::string& key, float* buf,
                          const std::string& shm_name, size_t bytes) override {
    if (!options_.enabled || buffers_.count(buf)) return;
    Buffer b;
    b.key = key;
    b.shm_name = shm_name;
    b.bytes = bytes;
    buffers_.emplace(buf, std::move(b));
  }

  absl::Status ReduceScatter(float* buf, int64_t chunk) override {
    std::vector<const float*>* peers = nullptr;
    if (absl::Status s = Resolve(buf, chunk, &peers); !s.ok()) return s;
    if (peers == nullptr) return inner_->ReduceScatter(buf, chunk);
    // Every rank's gradients are complete once all have entered the step.
    if (absl::Status s = inner_->Barrier(); !s.ok()) return s;
    const int w = world_size();
    const int64_t base = static_cast<int64_t>(rank()) * chunk;
    float* out = buf + base;
    // Fixed order over ranks, so the sum does not depend on who computes it.
    std::vector<const float*> src(w);
    for (int k = 0; k < w; ++k) src[k] = (*peers)[k] + base;
    constexpr int64_t kBlock = 4096;
    for (int64_t b = 0; b < chunk; b += kBlock) {
      const int64_t e = std::min(chunk, b + kBlock);
      float acc[kBlock];
      for (int64_t i = b; i < e; ++i) acc[i - b] = src[0][i];
      for (int k = 1; k < w; ++k) {
        const float* s = src[k];
        for (int64_t i = b; i < e; ++i) acc[i - b] += s[i];
      }
      std::memcpy(out + b, acc, (e - b) * sizeof(float));
    }
    // No barrier after: peers read only their own slices of this buffer, and
    // this rank's trainer rewrites it only after the all-gather's barrier.
    return absl::OkStatus();
  }

  absl::Status AllGather(float* buf, int64_t chunk) override {
    std::vector<const float*>* peers = nullptr;
    if (absl::Status s = Resolve(buf, chunk, &peers); !s.ok()) return s;
    if (peers == nullptr) return inner_->AllGather(buf, chunk);
    // Every rank has written its slice.
    if (absl::Status s = inner_->Barrier(); !s.ok()) return s;
    const int w = world_size();
    for (int k = 0; k < w; ++k) {
      if (k == rank()) continue;
      std::memcpy(buf + k * chunk, (*peers)[k] + k * chunk, chunk * sizeof(float));
    }
    // A peer rewrites its slice only in its next step, after that step's
    // reduce-scatter barrier, which this rank reaches only after copying.
    return absl::OkStatus();
  }

 private:
  struct Buffer {
    std::string key, shm_name;
    size_t bytes = 0;
    bool decided = false;
    bool local = false;
    std::vector<ShmRegion> regions;       // peers' mappings
    std::vector<const float*> pointers;   // per rank (own buffer for self)
  };

  // Sets *peers to the per-rank buffers when the shared-memory path is on
  // for `buf`, or null to pass the call through.
  absl::Status Resolve(float* buf, int64_t chunk, std::vector<const float*>** peers) {
    auto it = buffers_.find(buf);
    if (it == buffers_.end() || world_size() == 1) return absl::OkStatus();
    Buffer& b = it->second;
    if (static_cast<size_t>(chunk) * world_size() * sizeof(float) > b.bytes) {
      return absl::InvalidArgumentError("collective larger than the advised buffer");
    }
    if (!b.decided) {
      const std::string key = absl::StrCat(options_.prefix, "/", b.key, "/");
      absl::Status published = store_->Set(absl::StrCat(key, rank()), b.shm_name);
      bool ok = published.ok();
      b.pointers.assign(world_size(), nullptr);
      b.pointers[rank()] = buf;
      for (int k = 0; k < world_size() && ok; ++k) {
        if (k == rank()) continue;
        absl::StatusOr<std::string> name =
            store_->Get(absl::StrCat(key, k), options_.lookup_timeout);
        if (!name.ok()) return absl::UnavailableError(absl::StrCat(
            "rank ", k, " never advertised its ", b.key, " buffer: ", name.status().message()));
        absl::StatusOr<ShmRegion> region = ShmRegion::Open(*name, b.bytes);
        if (!region.ok()) {
          ok = false;  // another host, or another size: use the inner backend
          break;
        }
        b.pointers[k] = static_cast<const float*>(region->data());
        b.regions.push_back(std::move(*region));
      }
      double votes[1] = {ok ? 1.0 : 0.0};
      if (absl::Status s = inner_->AllReduce(votes); !s.ok()) return s;
      b.local = votes[0] == world_size();
      b.decided = true;
      if (!b.local) b.regions.clear();
    }
    if (b.local) *peers = &b.pointers;
    return absl::OkStatus();
  }

  std::unique_ptr<Collective> inner_;
  std::shared_ptr<KvStore> store_;
  const LocalShmOptions options_;
  std::map<float*, Buffer> buffers_;
};

}  // namespace

std::unique_ptr<Collective> CreateLocalShmCollective(std::unique_ptr<Collective> inner,
                                                     std::shared_ptr<KvStore> store,
                                                     const LocalShmOptions& options) {
  return std::make_unique<LocalShmCollective>(std::move(inner), store, options);
}

}  // namespace sherd
