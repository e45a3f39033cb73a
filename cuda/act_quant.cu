// torch-ternary: dynamic per-token activation quantization for the W1.58A8 linears
// (`torch_ternary::linear_a8`), int8 or fp8 e4m3, in ONE kernel: row max, scale, cast.
//
// Layout:
//   x  : T [M, K] (T = bf16 / fp16 / fp32), row stride ldx elements, contiguous along K
//   q  : uint8 [M, Kq] row-major, Kq = round_up(K, 16) >= K: int8 two's complement (fmt int8) or
//        e4m3fn bits (fmt e4m3); columns K .. Kq-1 are written as 0 (int8 0 / fp8 +0), so q can be
//        fed to a GEMM whose K is padded to 16 (the packed weight's Kp) with zero weights there.
//   sx : float32 [M], the per-token scale.
//
// Math (per row m; torch_ternary/ops_a8.py `quantize_activations` is the plain-torch twin and the
// GPU tests check the two bit for bit):
//   amax  = max_k |float(x[m, k])|                    (NaN propagates: max over |x| bit patterns)
//   s     = amax / QMAX (IEEE division), QMAX = 127 (int8) or 448 (e4m3);  s = 1 if amax < 2^-100
//   int8  : q = clamp(rint(float(x) / s), -127, 127)  (round half to even; NaN -> 0)
//   e4m3  : q = e4m3_satfinite_rn(float(x) / s)       (|v| > 448 -> +-448, NaN -> NaN)
//   sx[m] = s
// so that x ~= s * q and the GEMM epilogue multiplies by s. The 2^-100 floor keeps every quotient
// away from float32 subnormals, where this kernel (compiled with -ftz=true) and the CPU would differ.
//
// Thread mapping: one block of kThreads = 256 threads per row (grid-stride over rows when M exceeds
// the grid). Pass 1 reads the row (16-byte vector loads of V = 16 / sizeof(T) elements when the row
// is 16-byte aligned and K % V == 0, scalar loads otherwise) and reduces max |x| as unsigned bit
// patterns: warp `__reduce_max_sync`, then the 8 warp maxima through shared memory. Pass 2 re-reads
// the row (from L1 / L2: a FLUX row is at most 30 KB) and writes V one-byte codes per vector
// (8 bytes for 16-bit inputs, 4 for fp32), then the zero pad. Memory bound: sizeof(T) bytes read
// (twice, the second mostly from cache) and 1 byte written per element.
//
// e4m3 conversion uses `cvt.rn.satfinite.e4m3x2.f32`, which needs sm_89+; on older GPUs the e4m3
// entry points trap (the Python side never launches them there: fp8 GEMMs need sm_89+ too).
#include "common.cuh"

namespace tt {

constexpr int kActThreads = 256;
constexpr u32 kTinyBits = 0x0D800000u;  // 2^-100 as float32 bits

enum ActFormat { kFmtInt8 = 0, kFmtE4M3 = 1 };

template <int FMT>
struct ActFormatTraits;

template <>
struct ActFormatTraits<kFmtInt8> {
  static constexpr float kQmax = 127.0f;
  // One code byte for v = x / s.
  static __device__ __forceinline__ u32 code(float v) {
    int r = __float2int_rn(v);  // round half to even; NaN -> 0, +-inf -> INT_MAX / INT_MIN
    r = max(-127, min(127, r));
    return (u32)r & 0xFFu;
  }
  // Two code bytes: v0 in bits 0..7, v1 in bits 8..15.
  static __device__ __forceinline__ u32 code2(float v0, float v1) { return code(v0) | (code(v1) << 8); }
};

template <>
struct ActFormatTraits<kFmtE4M3> {
  static constexpr float kQmax = 448.0f;
  // Two code bytes: v0 in bits 0..7, v1 in bits 8..15 (one cvt for the pair).
  static __device__ __forceinline__ u32 code2(float v0, float v1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    unsigned short pair;
    // d = {e4m3(a) in the high byte, e4m3(b) in the low byte}; round to nearest even, saturate to
    // +-448, NaN stays NaN (0x7F)
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(pair) : "f"(v1), "f"(v0));
    return (u32)pair;
#else
    __trap();
    return 0u;
#endif
  }
  static __device__ __forceinline__ u32 code(float v) { return code2(v, 0.0f) & 0xFFu; }
};

template <typename T>
struct ActLoad;

template <>
struct ActLoad<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
};
template <>
struct ActLoad<__half> {
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
};
template <>
struct ActLoad<float> {
  static __device__ __forceinline__ float to_float(float v) { return v; }
};

// Block-wide max of unsigned values; every thread gets the result. `red` holds kActThreads / 32 words.
__device__ __forceinline__ u32 block_max_u32(u32 v, u32* red) {
  v = __reduce_max_sync(0xFFFFFFFFu, v);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  u32 m = lane < (kActThreads / 32) ? red[lane] : 0u;
  m = __reduce_max_sync(0xFFFFFFFFu, m);
  __syncthreads();  // red is reused by the next row
  return m;
}

template <typename T, int FMT>
__device__ __forceinline__ void act_quant_impl(unsigned char* __restrict__ q, float* __restrict__ sx,
                                               const T* __restrict__ x, int m_rows, int k, long long ldx, int kq,
                                               int vec) {
  typedef ActFormatTraits<FMT> Fmt;
  constexpr int V = 16 / sizeof(T);  // elements per 16-byte vector
  __shared__ u32 red[kActThreads / 32];
  for (int row = blockIdx.x; row < m_rows; row += gridDim.x) {
    const T* xr = x + (long long)row * ldx;
    unsigned char* qr = q + (long long)row * kq;
    // ---- pass 1: max |x| as float bit patterns (monotone for non-negative floats, NaN on top)
    u32 amax = 0u;
    if (vec) {
      for (int i = threadIdx.x; i < k / V; i += kActThreads) {
        const uint4 raw = ldg128(xr + (long long)i * V);
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int j = 0; j < V; ++j) amax = max(amax, __float_as_uint(fabsf(ActLoad<T>::to_float(e[j]))));
      }
    } else {
      for (int i = threadIdx.x; i < k; i += kActThreads)
        amax = max(amax, __float_as_uint(fabsf(ActLoad<T>::to_float(xr[i]))));
    }
    amax = block_max_u32(amax, red);
    const float a = __uint_as_float(amax);
    const float s = amax < kTinyBits ? 1.0f : __fdiv_rn(a, Fmt::kQmax);
    if (threadIdx.x == 0) sx[row] = s;
    // ---- pass 2: codes
    if (vec) {
      for (int i = threadIdx.x; i < k / V; i += kActThreads) {
        const uint4 raw = ldg128(xr + (long long)i * V);
        const T* e = reinterpret_cast<const T*>(&raw);
        u32 w[V / 4];
#pragma unroll
        for (int j = 0; j < V / 4; ++j) {
          const float v0 = __fdiv_rn(ActLoad<T>::to_float(e[4 * j + 0]), s);
          const float v1 = __fdiv_rn(ActLoad<T>::to_float(e[4 * j + 1]), s);
          const float v2 = __fdiv_rn(ActLoad<T>::to_float(e[4 * j + 2]), s);
          const float v3 = __fdiv_rn(ActLoad<T>::to_float(e[4 * j + 3]), s);
          w[j] = Fmt::code2(v0, v1) | (Fmt::code2(v2, v3) << 16);
        }
        if constexpr (V == 8) {
          *reinterpret_cast<uint2*>(qr + (long long)i * V) = make_uint2(w[0], w[1]);
        } else {
          *reinterpret_cast<u32*>(qr + (long long)i * V) = w[0];
        }
      }
    } else {
      for (int i = threadIdx.x; i < k; i += kActThreads)
        qr[i] = (unsigned char)Fmt::code(__fdiv_rn(ActLoad<T>::to_float(xr[i]), s));
    }
    for (int i = k + threadIdx.x; i < kq; i += kActThreads) qr[i] = 0;
  }
}

}  // namespace tt

// ------------------------------------------------------------------------------ entry points
//   q   : uint8 [M, kq] (int8 / e4m3 bits), kq >= k, 16-byte aligned rows when vec
//   sx  : float32 [M]
//   x   : T [M, k], row stride ldx elements
//   vec : 1 when x, ldx and k allow 16-byte loads (x 16-byte aligned, ldx % V == 0, k % V == 0)
// Launch: grid (min(M, 2^20), 1, 1), block (256, 1, 1), no dynamic shared memory.
#define TT_ACT_QUANT(NAME, T, FMT)                                                                      \
  extern "C" __global__ void __launch_bounds__(tt::kActThreads)                                         \
      NAME(unsigned char* __restrict__ q, float* __restrict__ sx, const T* __restrict__ x, int m_rows,   \
           int k, long long ldx, int kq, int vec) {                                                     \
    tt::act_quant_impl<T, FMT>(q, sx, x, m_rows, k, ldx, kq, vec);                                      \
  }

TT_ACT_QUANT(tt_act_quant_bf16_i8, __nv_bfloat16, tt::kFmtInt8)
TT_ACT_QUANT(tt_act_quant_f16_i8, __half, tt::kFmtInt8)
TT_ACT_QUANT(tt_act_quant_f32_i8, float, tt::kFmtInt8)
TT_ACT_QUANT(tt_act_quant_bf16_e4m3, __nv_bfloat16, tt::kFmtE4M3)
TT_ACT_QUANT(tt_act_quant_f16_e4m3, __half, tt::kFmtE4M3)
TT_ACT_QUANT(tt_act_quant_f32_e4m3, float, tt::kFmtE4M3)
