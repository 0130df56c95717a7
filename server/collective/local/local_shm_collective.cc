#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/log.h"
#include "common/shm_region.h"
#include "common/status_macros.h"
#include "server/collective/local/factory.h"

namespace sherd {
namespace {

// out[i] = sum over k of src[k][i], k in order, for i < n. Blocked so the
// partial sums stay in cache; the order over k is fixed, so the result does
// not depend on which rank computes it.
void SumInto(float* out, const std::vector<const float*>& src, int64_t n) {
  constexpr int64_t kBlock = 4096;
  float acc[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    for (int64_t i = b; i < e; ++i) acc[i - b] = src[0][i];
    for (size_t k = 1; k < src.size(); ++k) {
      const float* s = src[k];
      for (int64_t i = b; i < e; ++i) acc[i - b] += s[i];
    }
    std::memcpy(out + b, acc, (e - b) * sizeof(float));
  }
}

class LocalShmCollective final : public Collective {
 public:
  LocalShmCollective(std::unique_ptr<Collective> inner, std::shared_ptr<KvStore> store,
                     LocalShmOptions options)
      : inner_(std::move(inner)), store_(store), options_(std::move(options)) {
    SetDescription(inner_->Describe());
  }

  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  absl::Status AllReduce(std::span<double> v) override {
    if (!broken_.ok()) return broken_;
    return Track(inner_->AllReduce(v));
  }
  absl::Status Barrier() override {
    if (!broken_.ok()) return broken_;
    return Track(inner_->Barrier());
  }

  void AdviseSharedBuffer(const std::string& key, float* buf,
                          const std::string& shm_name, size_t bytes) override {
    if (!options_.enabled || buffers_.count(buf)) return;
    Buffer b;
    b.key = key;
    b.shm_name = shm_name;
    b.bytes = bytes;
    buffers_.emplace(buf, std::move(b));
  }

  std::string Describe() const override {
    absl::MutexLock l(&description_mu_);
    return description_;
  }

  absl::Status ReduceScatter(float* buf, int64_t chunk) override {
    if (!broken_.ok()) return broken_;
    Buffer* b = nullptr;
    if (absl::Status s = Track(Resolve(buf, chunk, &b)); !s.ok()) return s;
    if (b == nullptr) return Track(inner_->ReduceScatter(buf, chunk));
    // Every rank's gradients are complete once all have entered the step.
    if (absl::Status s = Track(inner_->Barrier()); !s.ok()) return s;
    if (group_ == nullptr) {
      // One host: this rank's slice, summed over every rank's buffer.
      std::vector<const float*> src(world_size());
      const int64_t base = static_cast<int64_t>(rank()) * chunk;
      for (int k = 0; k < world_size(); ++k) src[k] = b->pointers[k] + base;
      SumInto(buf + base, src, chunk);
      // No barrier after: peers read only their own slices of this buffer,
      // and this rank's trainer rewrites it only after the all-gather's
      // barrier.
      return absl::OkStatus();
    }
    // Hierarchical. Within the host: the partial sum of each chunk owned by
    // a member of this rank's cross-host group, into staging (host order).
    const std::vector<int>& mine = hosts_[host_];
    float* staging = Staging(chunk);
    std::vector<const float*> src(mine.size());
    for (size_t h = 0; h < hosts_.size(); ++h) {
      const int64_t base = static_cast<int64_t>(hosts_[h][local_]) * chunk;
      for (size_t j = 0; j < mine.size(); ++j) src[j] = b->pointers[mine[j]] + base;
      SumInto(staging + h * chunk, src, chunk);
    }
    // Across hosts: the group sums the partials; this rank's chunk lands at
    // its host's position.
    if (absl::Status s = Track(group_->ReduceScatter(staging, chunk)); !s.ok()) return s;
    std::memcpy(buf + static_cast<int64_t>(rank()) * chunk, staging + host_ * chunk,
                chunk * sizeof(float));
    // Peers on this host read only chunks owned by other groups' members;
    // this rank wrote only its own.
    return absl::OkStatus();
  }

  absl::Status AllGather(float* buf, int64_t chunk) override {
    if (!broken_.ok()) return broken_;
    Buffer* b = nullptr;
    if (absl::Status s = Track(Resolve(buf, chunk, &b)); !s.ok()) return s;
    if (b == nullptr) return Track(inner_->AllGather(buf, chunk));
    const int w = world_size();
    if (group_ == nullptr) {
      // Every rank has written its slice.
      if (absl::Status s = Track(inner_->Barrier()); !s.ok()) return s;
      for (int k = 0; k < w; ++k) {
        if (k == rank()) continue;
        std::memcpy(buf + k * chunk, b->pointers[k] + k * chunk, chunk * sizeof(float));
      }
      // A peer rewrites its slice only in its next step, after that step's
      // reduce-scatter barrier, which this rank reaches only after copying.
      return absl::OkStatus();
    }
    // Hierarchical. Across hosts: the chunks of this rank's group.
    float* staging = Staging(chunk);
    std::memcpy(staging + host_ * chunk, buf + static_cast<int64_t>(rank()) * chunk,
                chunk * sizeof(float));
    if (absl::Status s = Track(group_->AllGather(staging, chunk)); !s.ok()) return s;
    for (size_t h = 0; h < hosts_.size(); ++h) {
      if (static_cast<int>(h) == host_) continue;
      std::memcpy(buf + static_cast<int64_t>(hosts_[h][local_]) * chunk, staging + h * chunk,
                  chunk * sizeof(float));
    }
    // Every rank on this host holds its group's chunks: copy the other
    // groups' from their members here. Peers read only this rank's group's
    // chunks of this buffer, which it does not write after the barrier.
    if (absl::Status s = Track(inner_->Barrier()); !s.ok()) return s;
    const std::vector<int>& mine = hosts_[host_];
    for (size_t j = 0; j < mine.size(); ++j) {
      if (static_cast<int>(j) == local_) continue;
      for (size_t h = 0; h < hosts_.size(); ++h) {
        const int64_t base = static_cast<int64_t>(hosts_[h][j]) * chunk;
        std::memcpy(buf + base, b->pointers[mine[j]] + base, chunk * sizeof(float));
      }
    }
    return absl::OkStatus();
  }

 private:
  struct Buffer {
    std::string key, shm_name;
    size_t bytes = 0;
    bool decided = false;
    bool local = false;
    std::vector<ShmRegion> regions;       // this host's peers' mappings
    std::vector<const float*> pointers;   // per rank: own buffer, host peers'; null elsewhere
  };

  // A lost peer or a timeout is sticky: after it, every call fails fast
  // (contract). Bad arguments leave the backend usable.
  absl::Status Track(absl::Status s) {
    if (absl::IsUnavailable(s) && broken_.ok()) {
      broken_ = absl::UnavailableError(absl::StrCat(
          "collective broken by an earlier failure: ", s.message()));
    }
    return s;
  }

  void SetDescription(std::string d) {
    absl::MutexLock l(&description_mu_);
    description_ = std::move(d);
  }

  float* Staging(int64_t chunk) {
    const size_t n = hosts_.size() * static_cast<size_t>(chunk);
    if (staging_.size() < n) staging_.resize(n);
    return staging_.data();
  }

  // Which ranks share a host with which; once, at the first collective on
  // an advised buffer. Every rank computes the same answer from the same
  // published ids, so no vote is needed.
  absl::Status DecideTopology() {
    if (topology_decided_) return absl::OkStatus();
    std::string id = options_.host_id;
    if (id.empty()) {
      absl::StatusOr<std::string> made = HostShmId();
      if (!made.ok()) {
        SHERD_LOG(Warning, "shared-memory collectives off on this rank: %s",
                  made.status().message());
        // Unique: this rank shares its host with no one.
        id = absl::StrCat("unshared-", getpid(), "-", absl::Uniform<uint64_t>(absl::BitGen()));
      } else {
        id = *made;
      }
    }
    const std::string key = absl::StrCat(options_.prefix, "/host/");
    RETURN_IF_ERROR(store_->Set(absl::StrCat(key, rank()), id));
    std::map<std::string, int> host_of_id;
    std::vector<std::vector<int>> hosts;
    int host = -1;
    for (int k = 0; k < world_size(); ++k) {
      absl::StatusOr<std::string> other =
          k == rank() ? absl::StatusOr<std::string>(id)
                      : store_->Get(absl::StrCat(key, k), options_.lookup_timeout);
      if (!other.ok()) {
        return absl::UnavailableError(absl::StrCat("rank ", k, " never published its host: ",
                                                   other.status().message()));
      }
      auto [it, fresh] = host_of_id.emplace(*other, static_cast<int>(hosts.size()));
      if (fresh) hosts.emplace_back();
      hosts[it->second].push_back(k);  // ascending: hosts ordered by lowest rank
      if (k == rank()) host = it->second;
    }
    hosts_ = std::move(hosts);
    host_ = host;
    const std::vector<int>& mine = hosts_[host_];
    local_ = static_cast<int>(std::find(mine.begin(), mine.end(), rank()) - mine.begin());
    const size_t per_host = hosts_[0].size();
    const bool even = std::all_of(hosts_.begin(), hosts_.end(),
                                  [&](const std::vector<int>& h) { return h.size() == per_host; });
    if (hosts_.size() == 1) {
      mode_ = Mode::kOneHost;
    } else if (per_host > 1 && even && options_.make_group) {
      mode_ = Mode::kHierarchical;
    } else {
      mode_ = Mode::kInner;
      if (per_host > 1 || !even) {
        SHERD_LOG(Info, "%zu hosts with %s ranks each: the collectives use %s only",
                  hosts_.size(), even ? absl::StrCat(per_host) : std::string("unequal numbers of"),
                  inner_->Describe());
      }
    }
    topology_decided_ = true;
    return absl::OkStatus();
  }

  // The cross-host group of this rank's local index: H ranks, ranked by host.
  absl::Status ConnectGroup() {
    if (group_ != nullptr) return absl::OkStatus();
    absl::StatusOr<std::unique_ptr<Collective>> g = options_.make_group(
        absl::StrCat(options_.prefix, "/across/", local_), host_, static_cast<int>(hosts_.size()));
    if (!g.ok()) {
      return absl::UnavailableError(absl::StrCat("cannot connect rank ", rank(),
                                                 "'s cross-host group ", local_, ": ",
                                                 g.status().message()));
    }
    group_ = std::move(*g);
    return absl::OkStatus();
  }

  // Sets *out to the buffer when the shared-memory path is on for `buf`, or
  // leaves it null to pass the call through.
  absl::Status Resolve(float* buf, int64_t chunk, Buffer** out) {
    auto it = buffers_.find(buf);
    if (it == buffers_.end() || world_size() == 1) return absl::OkStatus();
    Buffer& b = it->second;
    if (static_cast<size_t>(chunk) * world_size() * sizeof(float) > b.bytes) {
      return absl::InvalidArgumentError("collective larger than the advised buffer");
    }
    if (!b.decided) {
      RETURN_IF_ERROR(DecideTopology());
      bool ok = mode_ != Mode::kInner;
      if (ok) {
        const std::string key = absl::StrCat(options_.prefix, "/", b.key, "/");
        ok = store_->Set(absl::StrCat(key, rank()), b.shm_name).ok();
        b.pointers.assign(world_size(), nullptr);
        b.pointers[rank()] = buf;
        for (int k : hosts_[host_]) {
          if (k == rank() || !ok) continue;
          absl::StatusOr<std::string> name =
              store_->Get(absl::StrCat(key, k), options_.lookup_timeout);
          if (!name.ok()) return absl::UnavailableError(absl::StrCat(
              "rank ", k, " never advertised its ", b.key, " buffer: ", name.status().message()));
          absl::StatusOr<ShmRegion> region = ShmRegion::Open(*name, b.bytes);
          if (!region.ok()) {
            SHERD_LOG(Warning, "cannot map rank %d's %s buffer (%s): its collectives use %s",
                      k, b.key, region.status().message(), inner_->Describe());
            ok = false;
            break;
          }
          b.pointers[k] = static_cast<const float*>(region->data());
          b.regions.push_back(std::move(*region));
        }
      }
      // Same path on every rank: shared memory only if every rank mapped.
      double votes[1] = {ok ? 1.0 : 0.0};
      RETURN_IF_ERROR(inner_->AllReduce(votes));
      b.local = votes[0] == world_size();
      if (b.local && mode_ == Mode::kHierarchical) RETURN_IF_ERROR(ConnectGroup());
      b.decided = true;
      if (!b.local) {
        b.regions.clear();
        b.pointers.clear();
      }
      UpdateDescription();
    }
    if (b.local) *out = &b;
    return absl::OkStatus();
  }

  void UpdateDescription() {
    std::vector<std::string> on, off;
    for (const auto& [buf, b] : buffers_) {
      if (b.decided) (b.local ? on : off).push_back(b.key);
    }
    std::string d;
    if (!on.empty()) {
      d = mode_ == Mode::kOneHost
              ? absl::StrFormat("shared memory (one host of %d ranks)", world_size())
              : absl::StrFormat("shared memory within %d hosts of %d ranks, %s across",
                                hosts_.size(), hosts_[0].size(), group_->Describe());
      if (!off.empty()) absl::StrAppend(&d, " for ", absl::StrJoin(on, ", "));
    }
    if (!off.empty() || on.empty()) {
      absl::StrAppend(&d, d.empty() ? "" : "; ", inner_->Describe());
      if (!on.empty()) absl::StrAppend(&d, " for ", absl::StrJoin(off, ", "));
    }
    SetDescription(std::move(d));
  }

  enum class Mode { kOneHost, kHierarchical, kInner };

  std::unique_ptr<Collective> inner_;
  std::shared_ptr<KvStore> store_;
  const LocalShmOptions options_;
  std::map<float*, Buffer> buffers_;
  absl::Status broken_;

  bool topology_decided_ = false;
  Mode mode_ = Mode::kInner;
  std::vector<std::vector<int>> hosts_;  // ranks per host, ascending
  int host_ = 0;                         // this rank's host index
  int local_ = 0;                        // this rank's index on its host
  std::unique_ptr<Collective> group_;    // cross-host group (hierarchical)
  std::vector<float> staging_;           // H chunks (hierarchical)

  mutable absl::Mutex description_mu_;
  std::string description_ ABSL_GUARDED_BY(description_mu_);
};

}  // namespace

std::unique_ptr<Collective> CreateLocalShmCollective(std::unique_ptr<Collective> inner,
                                                     std::shared_ptr<KvStore> store,
                                                     LocalShmOptions options) {
  return std::make_unique<LocalShmCollective>(std::move(inner), store, std::move(options));
}

absl::StatusOr<std::string> HostShmId() {
  constexpr char kName[] = "/sherd.host-id";
  constexpr size_t kLen = 32;
  // The first process creates the object and writes the token; others read
  // it, waiting briefly if they opened it between the create and the write.
  int fd = shm_open(kName, O_RDWR | O_CREAT | O_EXCL, 0644);
  if (fd >= 0) {
    absl::BitGen gen;
    const std::string token = absl::StrFormat("%016x%016x", absl::Uniform<uint64_t>(gen),
                                              absl::Uniform<uint64_t>(gen));
    const bool written = write(fd, token.data(), token.size()) == static_cast<ssize_t>(kLen);
    close(fd);
    if (!written) {
      shm_unlink(kName);
      return absl::InternalError(absl::StrCat("cannot write ", kName, ": ", strerror(errno)));
    }
    return token;
  }
  if (errno != EEXIST) {
    return absl::UnavailableError(absl::StrCat("cannot create ", kName, ": ", strerror(errno)));
  }
  for (int attempt = 0; attempt < 200; ++attempt) {
    fd = shm_open(kName, O_RDONLY, 0);
    if (fd < 0) {
      return absl::UnavailableError(absl::StrCat("cannot open ", kName, ": ", strerror(errno)));
    }
    char token[kLen];
    const ssize_t n = pread(fd, token, kLen, 0);
    close(fd);
    if (n == static_cast<ssize_t>(kLen)) return std::string(token, kLen);
    usleep(5000);
  }
  return absl::DataLossError(absl::StrCat(kName, " holds no host id (remove it)"));
}

}  // namespace sherd
