// Internal, device only: loads and stores of one element or one 4-element
// vector of each element type, widened to / narrowed from float.
//
// A 4-element vector is 16 bytes of fp32 (float4) or 8 bytes of a 16-bit
// type (uint2); the callers guarantee that alignment (see SegmentEntry).
// Plain (default-cached) loads and stores: the step reads the gradient in
// pass 1 and again in pass 2, and writes the param copy the all-gather reads
// next, so a slice small enough for L2 should stay there. The read-only
// (.nc) path is avoided on purpose: destinations may alias sources.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_kernels/internal/adamw_math.h"
#include "cuda_kernels/internal/launch.h"

namespace sherd::cuda_internal {

template <ElemType kType>
struct Io;

template <>
struct Io<ElemType::kFloat32> {
  __device__ static float Load1(const void* base, int64_t i) {
    return static_cast<const float*>(base)[i];
  }
  __device__ static void Load4(const void* base, int64_t i, float (&x)[4]) {
    const float4 v =
        *reinterpret_cast<const float4*>(static_cast<const float*>(base) + i);
    x[0] = v.x;
    x[1] = v.y;
    x[2] = v.z;
    x[3] = v.w;
  }
  __device__ static void Store1(void* base, int64_t i, float x) {
    static_cast<float*>(base)[i] = x;
  }
  __device__ static void Store4(void* base, int64_t i, const float (&x)[4]) {
    *reinterpret_cast<float4*>(static_cast<float*>(base) + i) =
        make_float4(x[0], x[1], x[2], x[3]);
  }
};

// Shared by the two 16-bit formats; Format supplies the conversions.
template <class Format>
struct Io16 {
  __device__ static float Load1(const void* base, int64_t i) {
    return Format::ToFloat(static_cast<const uint16_t*>(base)[i]);
  }
  __device__ static void Load4(const void* base, int64_t i, float (&x)[4]) {
    const uint2 v = *reinterpret_cast<const uint2*>(
        static_cast<const uint16_t*>(base) + i);
    // Little endian: element i is the low half of v.x.
    x[0] = Format::ToFloat(static_cast<uint16_t>(v.x & 0xffffu));
    x[1] = Format::ToFloat(static_cast<uint16_t>(v.x >> 16));
    x[2] = Format::ToFloat(static_cast<uint16_t>(v.y & 0xffffu));
    x[3] = Format::ToFloat(static_cast<uint16_t>(v.y >> 16));
  }
  __device__ static void Store1(void* base, int64_t i, float x) {
    static_cast<uint16_t*>(base)[i] = Format::FromFloat(x);
  }
  __device__ static void Store4(void* base, int64_t i, const float (&x)[4]) {
    uint2 v;
    v.x = static_cast<uint32_t>(Format::FromFloat(x[0])) |
          static_cast<uint32_t>(Format::FromFloat(x[1])) << 16;
    v.y = static_cast<uint32_t>(Format::FromFloat(x[2])) |
          static_cast<uint32_t>(Format::FromFloat(x[3])) << 16;
    *reinterpret_cast<uint2*>(static_cast<uint16_t*>(base) + i) = v;
  }
};

struct Bf16Format {
  __device__ static float ToFloat(uint16_t h) { return Bf16BitsToFloat(h); }
  __device__ static uint16_t FromFloat(float f) { return FloatToBf16Bits(f); }
};

struct HalfFormat {
  __device__ static float ToFloat(uint16_t h) { return HalfBitsToFloat(h); }
  __device__ static uint16_t FromFloat(float f) {
    return __half_as_ushort(__float2half_rn(f));
  }
};

template <>
struct Io<ElemType::kBFloat16> : Io16<Bf16Format> {};
template <>
struct Io<ElemType::kFloat16> : Io16<HalfFormat> {};

// No output stream: stores vanish at compile time.
template <>
struct Io<ElemType::kNone> {
  __device__ static void Store1(void*, int64_t, float) {}
  __device__ static void Store4(void*, int64_t, const float (&)[4]) {}
};

}  // namespace sherd::cuda_internal
