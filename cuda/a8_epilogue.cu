// torch-ternary: the epilogue of a W1.58A8 GEMM: integer (or fp32) accumulators times the
// per-token activation scale and the per-channel (or per-tensor) weight scale, plus bias, rounded
// once to the output dtype. One pass: 4 bytes read and sizeof(T) written per output.
//
// Layout:
//   acc  : A [M, ldacc] row-major, A = int32 (`torch._int_mm`) or float32 (`torch._scaled_mm` with
//          unit scales); ldacc >= N (the GEMM may have padded N)
//   sx   : float32 [M]                 per-token activation scales (cuda/act_quant.cu)
//   sw   : float32 [N] (sw_stride = 1) or [1] (sw_stride = 0): weight scales
//   bias : T [N] or nullptr
//   y    : T [M, N] row-major, contiguous (T = bf16 / fp16 / fp32)
//
// Math, in this order with IEEE float32 round-to-nearest and no fused multiply-add, exactly what
// the plain-torch reference of `torch_ternary::linear_a8` computes:
//   y[m, n] = T( (float(acc[m, n]) * sx[m]) * sw[n] + bias[n] )      (no add without bias)
// float(int32) is exact below 2^24, which holds for int8 x ternary products with K < 132104.
//
// Thread mapping: each thread owns 4 consecutive outputs of one row; grid.x * blockDim.x threads
// cover ceil(N / 4) column quads, grid.y walks the rows (grid-stride past 65535). With vec = 1
// (N % 4 == 0, ldacc % 4 == 0, 16-byte aligned acc, 4-element aligned y) a thread does one 128-bit
// load of acc and one 4-element store; otherwise scalar accesses with bounds checks.
#include "common.cuh"

namespace tt {

template <typename T>
struct OutCvt;
template <>
struct OutCvt<__nv_bfloat16> {
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
};
template <>
struct OutCvt<__half> {
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
};
template <>
struct OutCvt<float> {
  static __device__ __forceinline__ float from_float(float v) { return v; }
  static __device__ __forceinline__ float to_float(float v) { return v; }
};

__device__ __forceinline__ float acc_to_float(int a) { return __int2float_rn(a); }
__device__ __forceinline__ float acc_to_float(float a) { return a; }

template <typename A, typename T>
__device__ __forceinline__ void a8_epilogue_impl(T* __restrict__ y, const A* __restrict__ acc,
                                                 const float* __restrict__ sx, const float* __restrict__ sw,
                                                 const T* __restrict__ bias, int m_rows, int n, long long ldacc,
                                                 int sw_stride, int vec) {
  const int n0 = 4 * (blockIdx.x * blockDim.x + threadIdx.x);
  if (n0 >= n) return;
  float w[4], b[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int c = min(n0 + j, n - 1);
    w[j] = __ldg(sw + (long long)c * sw_stride);
    b[j] = bias != nullptr ? OutCvt<T>::to_float(bias[c]) : 0.0f;
  }
  for (int m = blockIdx.y; m < m_rows; m += gridDim.y) {
    const float s = __ldg(sx + m);
    const A* ar = acc + (long long)m * ldacc;
    T* yr = y + (long long)m * n;
    float a[4];
    if (vec) {
      const uint4 raw = ldg128(ar + n0);
      a[0] = acc_to_float(*reinterpret_cast<const A*>(&raw.x));
      a[1] = acc_to_float(*reinterpret_cast<const A*>(&raw.y));
      a[2] = acc_to_float(*reinterpret_cast<const A*>(&raw.z));
      a[3] = acc_to_float(*reinterpret_cast<const A*>(&raw.w));
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) a[j] = n0 + j < n ? acc_to_float(ar[n0 + j]) : 0.0f;
    }
    T out[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float v = __fmul_rn(__fmul_rn(a[j], s), w[j]);
      if (bias != nullptr) v = __fadd_rn(v, b[j]);
      out[j] = OutCvt<T>::from_float(v);
    }
    if (vec) {
      if constexpr (sizeof(T) == 2) {
        uint2 packed;
        packed.x = (u32) * reinterpret_cast<const unsigned short*>(&out[0]) |
                   ((u32) * reinterpret_cast<const unsigned short*>(&out[1]) << 16);
        packed.y = (u32) * reinterpret_cast<const unsigned short*>(&out[2]) |
                   ((u32) * reinterpret_cast<const unsigned short*>(&out[3]) << 16);
        *reinterpret_cast<uint2*>(yr + n0) = packed;
      } else {
        *reinterpret_cast<float4*>(yr + n0) = make_float4(out[0], out[1], out[2], out[3]);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (n0 + j < n) yr[n0 + j] = out[j];
      }
    }
  }
}

}  // namespace tt

// ------------------------------------------------------------------------------ entry points
// Launch: block (256, 1, 1), grid (ceil(ceil(N / 4) / 256), min(M, 65535), 1).
#define TT_A8_EPILOGUE(NAME, A, T)                                                                          \
  extern "C" __global__ void NAME(T* __restrict__ y, const A* __restrict__ acc, const float* __restrict__ sx, \
                                  const float* __restrict__ sw, const T* __restrict__ bias, int m_rows, int n, \
                                  long long ldacc, int sw_stride, int vec) {                                  \
    tt::a8_epilogue_impl<A, T>(y, acc, sx, sw, bias, m_rows, n, ldacc, sw_stride, vec);                       \
  }

TT_A8_EPILOGUE(tt_a8_epilogue_i32_bf16, int, __nv_bfloat16)
TT_A8_EPILOGUE(tt_a8_epilogue_i32_f16, int, __half)
TT_A8_EPILOGUE(tt_a8_epilogue_i32_f32, int, float)
TT_A8_EPILOGUE(tt_a8_epilogue_f32_bf16, float, __nv_bfloat16)
TT_A8_EPILOGUE(tt_a8_epilogue_f32_f16, float, __half)
TT_A8_EPILOGUE(tt_a8_epilogue_f32_f32, float, float)
