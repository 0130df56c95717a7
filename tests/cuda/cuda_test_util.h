// Test-only helpers for the CUDA tests: skipping without a GPU, owned
// device buffers, and random test data that is never zero.
//
// Tests that need a device derive their fixture from CudaTest (or start
// with SHERD_SKIP_WITHOUT_CUDA_DEVICE()), so on a machine without a GPU
// they report SKIPPED with the runtime's reason and CI stays green.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda_kernels/device.h"
#include "gtest/gtest.h"

#define SHERD_SKIP_WITHOUT_CUDA_DEVICE()                          \
  do {                                                            \
    const std::string sherd_why_ = ::sherd::NoCudaDeviceReason(); \
    if (!sherd_why_.empty()) {                                    \
      GTEST_SKIP() << "no CUDA device visible: " << sherd_why_;   \
    }                                                             \
  } while (0)

namespace sherd::cuda_test {

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SHERD_SKIP_WITHOUT_CUDA_DEVICE();
    ASSERT_TRUE(CudaSetDevice(0).ok());
  }
};

// Device memory freed on destruction. Typed views at an element offset let
// tests hand kernels misaligned pointers.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) {
    absl::StatusOr<void*> p = DeviceAlloc(bytes);
    EXPECT_TRUE(p.ok()) << p.status();
    if (p.ok()) ptr_ = *p;
    bytes_ = bytes;
  }
  ~DeviceBuffer() { DeviceFree(ptr_).IgnoreError(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <class T>
  T* as(size_t offset = 0) const {
    return static_cast<T*>(ptr_) + offset;
  }
  template <class T>
  void Upload(const std::vector<T>& v, size_t offset = 0) {
    ASSERT_LE((offset + v.size()) * sizeof(T), bytes_);
    ASSERT_TRUE(Copy(as<T>(offset), v.data(), v.size() * sizeof(T)).ok());
  }
  template <class T>
  std::vector<T> Download(size_t n, size_t offset = 0) const {
    std::vector<T> v(n);
    absl::Status s = Copy(v.data(), as<T>(offset), n * sizeof(T));
    EXPECT_TRUE(s.ok()) << s;
    return v;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

inline uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

inline float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// Uniform magnitude in [lo, hi), random sign unless positive: never zero.
inline std::vector<float> RandomFloats(size_t n, float lo, float hi,
                                       uint64_t seed, bool positive = false) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> mag(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) {
    x = mag(rng);
    if (!positive && (rng() & 1)) x = -x;
  }
  return v;
}

// |a - b| <= rel * max(|a|, |b|), with NaNs equal only to the same bits
// (poison must survive exactly). Returns the number of violations and adds
// a failure naming the first few.
inline int64_t CountRelativeMismatches(const std::vector<float>& got,
                                       const std::vector<float>& want,
                                       double rel, const char* what) {
  int64_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const float a = got[i], b = want[i];
    bool ok;
    if (std::isnan(a) || std::isnan(b)) {
      ok = Bits(a) == Bits(b);
    } else {
      const double scale = std::max(std::fabs(a), std::fabs(b));
      ok = std::fabs(static_cast<double>(a) - b) <= rel * scale;
    }
    if (!ok && ++bad <= 5) {
      ADD_FAILURE() << what << "[" << i << "]: got " << a << " (0x" << std::hex
                    << Bits(a) << "), want " << b << " (0x" << Bits(b)
                    << std::dec << ")";
    }
  }
  return bad;
}

inline int64_t CountBitDifferences(const std::vector<float>& a,
                                   const std::vector<float>& b) {
  int64_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += Bits(a[i]) != Bits(b[i]);
  return n;
}

}  // namespace sherd::cuda_test
