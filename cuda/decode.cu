// torch-ternary: decode kernels for `torch_ternary::unpack` and `torch_ternary::dequantize`, and
// the decode step of the large-M "decode into a workspace, then cuBLAS" linear path.
//
// Layout (see common.cuh and docs/format.md): packed codes uint8 [N, Kp/4] read as u32 words
// [N, kblocks], kblocks = Kp/16; word kb of row n holds weights k = 16*kb .. 16*kb+15, weight j in
// slot 8*(j%2) + j/2, code c = q + 1. Scales float32 [S_n, S_k].
//
// Thread mapping: one thread per packed word (16 weights): grid.x * blockDim.x threads cover the
// kblocks words of a row (thread -> kb), grid.y walks the rows (row n = blockIdx.y + i * gridDim.y,
// so N may exceed the grid.y limit). A warp reads 32 consecutive words (128 contiguous bytes) of
// one row and writes the 32*16 outputs they decode to. When K % 16 == 0 every output row starts 16-byte
// aligned (int8: K bytes, 16-bit: 2K bytes, fp32: 4K bytes) and a thread writes its 16 outputs
// with 128-bit stores (1, 2 or 4 of them); otherwise it writes element by element, skipping the
// pad (k >= K). The kernels are memory bound: 0.25 byte read per weight, 1 / 2 / 4 bytes written.
//
// Values: unpack writes int8 q. dequantize writes s * q where s is the float32 scale of the
// weight's (row, group), rounded once to the output dtype exactly like the reference
// `q.to(dtype) * s.to(dtype)` (q in {-1, 0, 1} makes the product exact, +0 for q == 0).
#include "common.cuh"

namespace tt {

// ------------------------------------------------------------------------------------ unpack
// int8 weights in logical order from one word: out[0..3] hold weights 0..3, 4..7, 8..11, 12..15.
// v_i = ((w >> 2i) & 0x03030303) - 1 per byte holds weights (2i, 2i+8, 2i+1, 2i+9) in bytes 0..3.
__device__ __forceinline__ void unpack_word_i8(u32 w, u32 (&out)[4]) {
  const u32 v0 = __vsub4(w & 0x03030303u, 0x01010101u);
  const u32 v1 = __vsub4((w >> 2) & 0x03030303u, 0x01010101u);
  const u32 v2 = __vsub4((w >> 4) & 0x03030303u, 0x01010101u);
  const u32 v3 = __vsub4((w >> 6) & 0x03030303u, 0x01010101u);
  out[0] = __byte_perm(v0, v1, 0x6420);  // weights 0, 1, 2, 3
  out[1] = __byte_perm(v2, v3, 0x6420);  // weights 4, 5, 6, 7
  out[2] = __byte_perm(v0, v1, 0x7531);  // weights 8, 9, 10, 11
  out[3] = __byte_perm(v2, v3, 0x7531);  // weights 12, 13, 14, 15
}

__device__ __forceinline__ void unpack_i8_impl(signed char* __restrict__ out, const u32* __restrict__ packed, int n_rows,
                                               int k, int kblocks) {
  const bool vec = (k & 15) == 0;
  const int kb = blockIdx.x * blockDim.x + threadIdx.x;
  if (kb >= kblocks) return;
  for (int n = blockIdx.y; n < n_rows; n += gridDim.y) {
    const long long idx = (long long)n * kblocks + kb;
    u32 q[4];
    unpack_word_i8(ldg32(packed + idx), q);
    signed char* dst = out + (long long)n * k + 16 * kb;
    if (vec) {
      *reinterpret_cast<uint4*>(dst) = make_uint4(q[0], q[1], q[2], q[3]);
    } else {
      const int valid = min(16, k - 16 * kb);
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        if (j < valid) dst[j] = (signed char)((q[j >> 2] >> (8 * (j & 3))) & 0xFFu);
      }
    }
  }
}

// -------------------------------------------------------------------------------- dequantize
// Scale of the word (n, kb): scale[n * s_row_stride + group(kb)] (s_row_stride = 0 for S_n == 1;
// grouped == 0 means S_k == 1).
__device__ __forceinline__ float word_scale(const float* __restrict__ scale, int n, int kb, int s_row_stride,
                                            int grouped, GroupDiv gdiv) {
  const int col = grouped ? gdiv(kb) : 0;
  return __ldg(scale + (long long)n * s_row_stride + col);
}

template <typename T>
__device__ __forceinline__ void dequant_half_impl(T* __restrict__ out, const u32* __restrict__ packed,
                                                  const float* __restrict__ scale, int n_rows, int k, int kblocks,
                                                  int s_row_stride, int grouped, GroupDiv gdiv) {
  const bool vec = (k & 15) == 0;
  const int kb = blockIdx.x * blockDim.x + threadIdx.x;
  if (kb >= kblocks) return;
  for (int n = blockIdx.y; n < n_rows; n += gridDim.y) {
    const long long idx = (long long)n * kblocks + kb;
    const u32 w = ldg32(packed + idx);
    const u32 s2 = splat_scale<T>(word_scale(scale, n, kb, s_row_stride, grouped, gdiv));
    u32 p[8];  // p[i] = (w_2i, w_2i+1) scaled: consecutive k, low half first
#pragma unroll
    for (int i = 0; i < 8; ++i) p[i] = scale_pair<T>(decode_pair<T>(w >> (2 * i)), s2);
    T* dst = out + (long long)n * k + 16 * kb;
    if (vec) {
      reinterpret_cast<uint4*>(dst)[0] = make_uint4(p[0], p[1], p[2], p[3]);
      reinterpret_cast<uint4*>(dst)[1] = make_uint4(p[4], p[5], p[6], p[7]);
    } else {
      const int valid = min(16, k - 16 * kb);
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        if (j < valid) dst[j] = Half2Traits<T>::from_bits((unsigned short)(p[j >> 1] >> (16 * (j & 1))));
      }
    }
  }
}

__device__ __forceinline__ void dequant_f32_impl(float* __restrict__ out, const u32* __restrict__ packed,
                                                 const float* __restrict__ scale, int n_rows, int k, int kblocks,
                                                 int s_row_stride, int grouped, GroupDiv gdiv) {
  const bool vec = (k & 15) == 0;
  const int kb = blockIdx.x * blockDim.x + threadIdx.x;
  if (kb >= kblocks) return;
  for (int n = blockIdx.y; n < n_rows; n += gridDim.y) {
    const long long idx = (long long)n * kblocks + kb;
    const u32 w = ldg32(packed + idx);
    const float s = word_scale(scale, n, kb, s_row_stride, grouped, gdiv);
    float v[16];
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int slot = 8 * (j & 1) + (j >> 1);
      v[j] = (float)((int)((w >> (2 * slot)) & 3u) - 1) * s;
    }
    float* dst = out + (long long)n * k + 16 * kb;
    if (vec) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
        reinterpret_cast<float4*>(dst)[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
    } else {
      const int valid = min(16, k - 16 * kb);
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        if (j < valid) dst[j] = v[j];
      }
    }
  }
}

}  // namespace tt

// ------------------------------------------------------------------------------ entry points
// All pointers are raw device pointers of contiguous tensors:
//   out     : int8 / bf16 / fp16 / fp32 [N, K]
//   packed  : uint8 [N, 4*kblocks] read as u32 [N, kblocks]
//   scale   : float32 [S_n, S_k]; s_row_stride = S_k if S_n == N else 0
//   grouped : S_k > 1; then (gshift, gmagic) encode the division by G/16 (see GroupDiv)
extern "C" __global__ void tt_unpack_i8(signed char* __restrict__ out, const tt::u32* __restrict__ packed, int n_rows,
                                        int k, int kblocks) {
  tt::unpack_i8_impl(out, packed, n_rows, k, kblocks);
}

#define TT_DEQUANT_HALF(NAME, T)                                                                               \
  extern "C" __global__ void NAME(T* __restrict__ out, const tt::u32* __restrict__ packed,                     \
                                  const float* __restrict__ scale, int n_rows, int k, int kblocks,             \
                                  int s_row_stride, int grouped, int gshift, unsigned int gmagic) {            \
    tt::dequant_half_impl<T>(out, packed, scale, n_rows, k, kblocks, s_row_stride, grouped,                    \
                             tt::GroupDiv{gshift, gmagic});                                                    \
  }

TT_DEQUANT_HALF(tt_dequant_bf16, __nv_bfloat16)
TT_DEQUANT_HALF(tt_dequant_f16, __half)

extern "C" __global__ void tt_dequant_f32(float* __restrict__ out, const tt::u32* __restrict__ packed,
                                          const float* __restrict__ scale, int n_rows, int k, int kblocks,
                                          int s_row_stride, int grouped, int gshift, unsigned int gmagic) {
  tt::dequant_f32_impl(out, packed, scale, n_rows, k, kblocks, s_row_stride, grouped, tt::GroupDiv{gshift, gmagic});
}
