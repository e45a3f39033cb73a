// torch-ternary CUDA kernels: shared device helpers (included by every .cu of this folder).
//
// Packed layout `k16-interleaved-v1` (docs/format.md): a ternary weight q[N, K] in {-1, 0, 1} is
// stored as codes c = q + 1 in uint8 [N, Kp/4], Kp = ceil(K/16)*16, row-major, contiguous. Each row
// is a run of little-endian 32-bit words; word `kb` of row `n` holds weights k = 16*kb + j,
// j = 0..15, weight j in the 2-bit slot 8*(j%2) + j/2:
//
//   bit:    31..30  29..28 ... 17..16 | 15..14 13..12 ... 1..0
//   weight:   15      13   ...    1   |   14     12   ...   0
//
// so `(word >> 2i) & 0x00030003` isolates the codes of the consecutive pair (2i, 2i+1), i = 0..7,
// in the low bits of the two 16-bit halves. OR-ing the exponent of 128 (bf16 0x4300) or 1024
// (fp16 0x6400) gives the exact half-precision pair (128 + c, 128 + c'); one fused multiply-add
// with (1, 1) and (-129, -129) (fp16: -1025) gives the pair (q_2i, q_2i+1) exactly. Pad slots
// (k >= K) hold code 1, i.e. weight 0. Scales are float32 [S_n, S_k] (S_n in {1, N},
// S_k = ceil(K/G)); a group size G is a multiple of 16 unless S_k == 1, so a word never straddles
// two scale groups.
//
// NVRTC compatibility: no host headers; only cuda_bf16.h / cuda_fp16.h, which come from the CUDA
// include folder CuPy passes to NVRTC (NVRTC 13 bundles neither; the loader retries with a
// toolkit's or the NVIDIA wheels' include folder). Entry points are extern "C", so no name
// expressions are needed. Needs sm_80+ (bf16x2 fma, mma.sync m16n8k16, cp.async, ldmatrix).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace tt {

typedef unsigned int u32;
typedef unsigned long long u64;

// ---------------------------------------------------------------------------------- dtype traits
template <typename T>
struct Half2Traits;

template <>
struct Half2Traits<__nv_bfloat16> {
  static constexpr u32 kMagic = 0x43004300u;     // bf16 pair (128, 128)
  static constexpr u32 kOne2 = 0x3F803F80u;      // bf16 pair (1, 1)
  static constexpr u32 kNegOffset = 0xC301C301u;  // bf16 pair (-129, -129)
  static constexpr u32 kNegZero2 = 0x80008000u;  // bf16 pair (-0, -0): fma(a, b, -0) == a * b
  // d = a * b + c on two bf16 lanes, round to nearest (exact for every use below).
  static __device__ __forceinline__ u32 fma2(u32 a, u32 b, u32 c) {
    u32 d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
  }
  static __device__ __forceinline__ unsigned short bits(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_bits(unsigned short b) { return __ushort_as_bfloat16(b); }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  // D(16x8, f32) += A(16x16, bf16, row) * B(16x8, bf16, col)
  static __device__ __forceinline__ void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct Half2Traits<__half> {
  static constexpr u32 kMagic = 0x64006400u;      // fp16 pair (1024, 1024)
  static constexpr u32 kOne2 = 0x3C003C00u;       // fp16 pair (1, 1)
  static constexpr u32 kNegOffset = 0xE401E401u;  // fp16 pair (-1025, -1025)
  static constexpr u32 kNegZero2 = 0x80008000u;   // fp16 pair (-0, -0)
  static __device__ __forceinline__ u32 fma2(u32 a, u32 b, u32 c) {
    u32 d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
  }
  static __device__ __forceinline__ unsigned short bits(float v) { return __half_as_ushort(__float2half_rn(v)); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ __half from_bits(unsigned short b) { return __ushort_as_half(b); }
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// --------------------------------------------------------------------------------- decoding
// The half2 pair (q_2i, q_2i+1) of a word already shifted right by 2i. Three integer/FP ops:
// shift (folded by the caller), LOP3 (and + or), one half2 fma.
template <typename T>
__device__ __forceinline__ u32 decode_pair(u32 shifted_word) {
  typedef Half2Traits<T> Tr;
  return Tr::fma2((shifted_word & 0x00030003u) | Tr::kMagic, Tr::kOne2, Tr::kNegOffset);
}

// A half2 pair times a half2 scale pair (s, s): exact, since every q is -1, 0 or 1; the result is
// what the reference computes as `q.to(dtype) * s.to(dtype)`.
template <typename T>
__device__ __forceinline__ u32 scale_pair(u32 q2, u32 s2) {
  return Half2Traits<T>::fma2(q2, s2, Half2Traits<T>::kNegZero2);
}

// The half2 pair (s, s) for a float32 scale, rounded to nearest like `scale.to(dtype)`.
template <typename T>
__device__ __forceinline__ u32 splat_scale(float s) {
  const u32 b = Half2Traits<T>::bits(s);
  return b | (b << 16);
}

// ------------------------------------------------------------------------------ scale groups
// Maps a word index kb (16 weights) to its scale column kb / gb without a divide.
// gb = G / 16 words per group. The host passes `shift` >= 0 when gb is a power of two, otherwise
// shift = -1 and magic = ceil(2^32 / gb) (gb >= 3): floor(kb * magic / 2^32) == kb / gb for every
// kb < 2^32 / gb, which holds since the host limits kb < 2^16 and gb < 2^16.
struct GroupDiv {
  int shift;
  u32 magic;
  __device__ __forceinline__ int operator()(int kb) const {
    return shift >= 0 ? (kb >> shift) : (int)__umulhi((u32)kb, magic);
  }
};

// ------------------------------------------------------------------------------ PTX wrappers
__device__ __forceinline__ u32 smem_u32(const void* p) {
  u32 a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }\n" : "=r"(a) : "l"(p));
  return a;
}

// 16 bytes global -> shared, bypassing L1; zero-filled (nothing read) when !valid.
__device__ __forceinline__ void cp_async16(u32 saddr, const void* gptr, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(gptr), "r"(valid ? 16 : 0)
               : "memory");
}

// 4 bytes global -> shared; zero-filled when !valid.
__device__ __forceinline__ void cp_async4(u32 saddr, const void* gptr, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(saddr), "l"(gptr), "r"(valid ? 4 : 0)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], u32 saddr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(saddr));
}

// Read-only 128-bit / 32-bit global loads (ld.global.nc).
__device__ __forceinline__ uint4 ldg128(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ u32 ldg32(const void* p) { return __ldg(reinterpret_cast<const unsigned int*>(p)); }

__device__ __forceinline__ u32 word_of(const uint4& v, int i) {
  return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w));
}

}  // namespace tt
