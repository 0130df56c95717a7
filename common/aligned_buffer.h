// A zero-initialized, 64-byte aligned array of floats owned by the server
// (master params and Adam moments). Allocation failure is reported, not
// thrown, so a model that does not fit fails Register cleanly.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace sherd {

class AlignedFloats {
 public:
  AlignedFloats() = default;
  // Returns false if the memory could not be allocated.
  bool Allocate(int64_t n) {
    size_t bytes = (static_cast<size_t>(n) * sizeof(float) + 63) / 64 * 64;
    if (bytes == 0) bytes = 64;
    void* p = std::aligned_alloc(64, bytes);
    if (p == nullptr) return false;
    std::memset(p, 0, bytes);
    data_.reset(static_cast<float*>(p));
    size_ = n;
    return true;
  }
  float* data() const { return data_.get(); }
  int64_t size() const { return size_; }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> data_;
  int64_t size_ = 0;
};

}  // namespace sherd
