// torch-ternary: fused large-M GEMM y[M, N] = x[M, K] @ (s * q)[N, K]^T + b, decoding the 2-bit
// weights between shared memory and the tensor cores (mma.sync m16n8k16, bf16 / fp16 in, fp32
// accumulation). Activations are the A operand (ldmatrix from a swizzled tile), weights the B
// operand (decoded in registers from the packed words), in a 3-stage cp.async pipeline.
//
// UNMEASURED: this kernel is compiled and tested for correctness only where a GPU ran the tests;
// the dispatch table (torch_ternary/kernels/dispatch.py) keeps "decode + cuBLAS" for large M
// until a GPU benchmark (benchmarks/cuda_kernels.py) shows this path winning.
//
// Layout (common.cuh, docs/format.md): packed codes u32 [N, kblocks] (kblocks = Kp/16 words a row,
// weight j of a word in slot 8*(j%2) + j/2); scales float32 [S_n, S_k]; x [M, K] contiguous with
// K % 8 == 0 and 16-byte aligned (the host pads otherwise); y [M, N] contiguous; bias [N] or null.
//
// Tiling: block tile BM x BN = 128 x 128 outputs, K step BK = 64 (4 packed words a row).
// 256 threads = 8 warps as 2 (M) x 4 (N); warp tile 64 x 32 = 4 m16 tiles x 4 n8 tiles, 64 fp32
// accumulators a thread. Grid: (ceil(N / 128), ceil(M / 128)); blockIdx.x walks N so that
// neighbouring blocks share the same activation rows in L2.
//
// Shared memory, per stage: A tile 128 rows x 64 halfs (128 bytes a row = 8 chunks of 16 bytes;
// chunk c of row r is stored at chunk c ^ (r % 8), so the 8 row addresses of an ldmatrix phase hit
// 8 different bank groups), B tile 128 rows x 4 words (16 bytes a row, unswizzled). 3 stages:
// 3 * (16 KiB + 2 KiB) = 54 KiB of dynamic shared memory (the host raises the 48 KiB limit).
//
// Global -> shared: A with 16-byte cp.async.cg, 4 chunks a thread (8 consecutive threads cover a
// 128-byte row segment, coalesced), zero-filled past M and past K; B with 4-byte cp.async.ca,
// 2 words a thread, zero-filled past N and past kblocks (a zero word decodes to -1 there, but
// the matching activations are zero-filled, and rows past N are never stored).
//
// Fragments. A: ldmatrix.x4 with lane l addressing row (l % 16), chunk 2*ks + l / 16 gives
// a0..a3 = (g, 2t), (g+8, 2t), (g, 2t+8), (g+8, 2t+8) [g = lane / 4, t = lane % 4]. B: b0 holds
// W[n = g][k = 2t, 2t+1] = pair t of the row's word for this k16 step, b1 holds pair t + 4; a lane
// reads the row's 4 words of the stage with one 128-bit shared load (the 4 lanes of a quad read
// the same address: a broadcast), shifts the word right by 2t once and decodes both pairs with
// LOP3 + half2 fma (`decode_pair`). Per-group scales multiply the decoded pair by the half2 (s, s)
// (exactly the reference weights q.to(dtype) * s.to(dtype)); per-tensor / per-channel scales are
// applied in fp32 in the epilogue, with the bias, before one rounding to the output dtype.
#include "common.cuh"

namespace tt {

constexpr int kGemmBM = 128;
constexpr int kGemmBN = 128;
constexpr int kGemmBK = 64;  // 4 packed words a row
constexpr int kGemmStages = 3;
constexpr int kGemmThreads = 256;
constexpr int kGemmWarpsN = 4;
constexpr int kGemmMT = 4;  // m16 tiles a warp (64 rows)
constexpr int kGemmNT = 4;  // n8 tiles a warp (32 columns)
constexpr int kGemmAStageHalfs = kGemmBM * kGemmBK;  // 8192 halfs = 16 KiB
constexpr int kGemmBStageWords = kGemmBN * 4;        // 512 words = 2 KiB
constexpr int kGemmSmemBytes = kGemmStages * (kGemmAStageHalfs * 2 + kGemmBStageWords * 4);
static_assert(kGemmSmemBytes == 55296, "update GEMM_SMEM_BYTES in torch_ternary/kernels/gemm.py");

template <typename T>
__device__ __forceinline__ void gemm_impl(T* __restrict__ y, const T* __restrict__ x, const u32* __restrict__ wq,
                                          const float* __restrict__ scale, const T* __restrict__ bias, int M,
                                          int N, int K, int kblocks, int s_row_stride, int grouped, GroupDiv gdiv) {
  typedef Half2Traits<T> Tr;
  extern __shared__ uint4 smem_raw[];
  T* const As = reinterpret_cast<T*>(smem_raw);
  u32* const Bs = reinterpret_cast<u32*>(As + kGemmStages * kGemmAStageHalfs);

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int warp_m = warp / kGemmWarpsN;  // 0..1
  const int warp_n = warp % kGemmWarpsN;  // 0..3
  const int g = lane >> 2;
  const int t = lane & 3;
  const int block_n = blockIdx.x * kGemmBN;
  const int block_m = blockIdx.y * kGemmBM;
  const int ktiles = (kblocks + 3) / 4;

  auto load_stage = [&](int stage, int kt) {
    T* a_dst = As + stage * kGemmAStageHalfs;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int idx = tid + i * kGemmThreads;  // 0..1023
      const int row = idx >> 3;
      const int ch = idx & 7;
      const int gm = block_m + row;
      const int gk = kt * kGemmBK + ch * 8;
      const bool valid = gm < M && gk < K;
      const T* src = valid ? x + (long long)gm * K + gk : x;
      cp_async16(smem_u32(a_dst + row * kGemmBK + ((ch ^ (row & 7)) * 8)), src, valid);
    }
    u32* b_dst = Bs + stage * kGemmBStageWords;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int idx = tid + i * kGemmThreads;  // 0..511
      const int row = idx >> 2;
      const int wd = idx & 3;
      const int gn = block_n + row;
      const int kb = kt * 4 + wd;
      const bool valid = gn < N && kb < kblocks;
      const u32* src = valid ? wq + (long long)gn * kblocks + kb : wq;
      cp_async4(smem_u32(b_dst + row * 4 + wd), src, valid);
    }
  };

  float acc[kGemmMT][kGemmNT][4];
#pragma unroll
  for (int i = 0; i < kGemmMT; ++i)
#pragma unroll
    for (int j = 0; j < kGemmNT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  // Rows of the B fragments this lane decodes (clamped for the scale lookup only).
  int nrow_c[kGemmNT];
#pragma unroll
  for (int j = 0; j < kGemmNT; ++j) nrow_c[j] = min(block_n + warp_n * 32 + j * 8 + g, N - 1);

#pragma unroll
  for (int s = 0; s < kGemmStages - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    cp_async_commit();
  }

  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<kGemmStages - 2>();
    __syncthreads();
    {
      const int nk = kt + kGemmStages - 1;
      if (nk < ktiles) load_stage(nk % kGemmStages, nk);
      cp_async_commit();
    }
    const int stage = kt % kGemmStages;
    const T* a_st = As + stage * kGemmAStageHalfs;
    const u32* b_st = Bs + stage * kGemmBStageWords;

    uint4 bw[kGemmNT];
#pragma unroll
    for (int j = 0; j < kGemmNT; ++j)
      bw[j] = *reinterpret_cast<const uint4*>(b_st + (warp_n * 32 + j * 8 + g) * 4);

#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      u32 af[kGemmMT][4];
#pragma unroll
      for (int i = 0; i < kGemmMT; ++i) {
        const int row = warp_m * 64 + i * 16 + (lane & 15);
        const int ch = ks * 2 + (lane >> 4);
        ldmatrix_x4(af[i], smem_u32(a_st + row * kGemmBK + ((ch ^ (row & 7)) * 8)));
      }
      const int kb_c = min(kt * 4 + ks, kblocks - 1);
#pragma unroll
      for (int j = 0; j < kGemmNT; ++j) {
        const u32 w = word_of(bw[j], ks) >> (2 * t);
        u32 b0 = decode_pair<T>(w);
        u32 b1 = decode_pair<T>(w >> 8);
        if (grouped) {
          const u32 s2 = splat_scale<T>(__ldg(scale + (long long)nrow_c[j] * s_row_stride + gdiv(kb_c)));
          b0 = scale_pair<T>(b0, s2);
          b1 = scale_pair<T>(b1, s2);
        }
#pragma unroll
        for (int i = 0; i < kGemmMT; ++i) Tr::mma(acc[i][j], af[i], b0, b1);
      }
    }
  }
  cp_async_wait<0>();

  // ---- epilogue: C fragment c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, cols 2t, 2t+1)
  const bool pair_store = (N & 1) == 0;
#pragma unroll
  for (int j = 0; j < kGemmNT; ++j) {
    const int n = block_n + warp_n * 32 + j * 8 + 2 * t;
    if (n >= N) continue;
    const bool has1 = n + 1 < N;
    float s0 = 1.f, s1 = 1.f, b0 = 0.f, b1 = 0.f;
    if (!grouped) {
      s0 = __ldg(scale + (long long)n * s_row_stride);
      s1 = has1 ? __ldg(scale + (long long)(n + 1) * s_row_stride) : 0.f;
    }
    if (bias != nullptr) {
      b0 = Tr::to_float(bias[n]);
      b1 = has1 ? Tr::to_float(bias[n + 1]) : 0.f;
    }
#pragma unroll
    for (int i = 0; i < kGemmMT; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int m = block_m + warp_m * 64 + i * 16 + g + 8 * h;
        if (m >= M) continue;
        const float v0 = acc[i][j][2 * h] * s0 + b0;
        const float v1 = acc[i][j][2 * h + 1] * s1 + b1;
        T* dst = y + (long long)m * N + n;
        if (pair_store && has1) {
          const u32 packed2 = (u32)Tr::bits(v0) | ((u32)Tr::bits(v1) << 16);
          *reinterpret_cast<u32*>(dst) = packed2;
        } else {
          dst[0] = Tr::from_float(v0);
          if (has1) dst[1] = Tr::from_float(v1);
        }
      }
    }
  }
}

}  // namespace tt

// ------------------------------------------------------------------------------ entry points
// y [M, N], x [M, K] (K % 8 == 0, 16-byte aligned), packed u32 [N, kblocks], scale float32
// [S_n, S_k], bias [N] or null; s_row_stride = S_k if S_n == N else 0; grouped = S_k > 1 (then
// gshift / gmagic encode the division by G/16). Launch: grid (ceil(N/128), ceil(M/128)),
// block 256, dynamic shared memory TT_GEMM_SMEM_BYTES (= 55296).
#define TT_GEMM(NAME, T)                                                                                         \
  extern "C" __global__ void __launch_bounds__(256, 1)                                                           \
      NAME(T* __restrict__ y, const T* __restrict__ x, const tt::u32* __restrict__ packed,                       \
           const float* __restrict__ scale, const T* __restrict__ bias, int M, int N, int K, int kblocks,        \
           int s_row_stride, int grouped, int gshift, unsigned int gmagic) {                                     \
    tt::gemm_impl<T>(y, x, packed, scale, bias, M, N, K, kblocks, s_row_stride, grouped,                        \
                     tt::GroupDiv{gshift, gmagic});                                                              \
  }

TT_GEMM(tt_gemm_bf16, __nv_bfloat16)
TT_GEMM(tt_gemm_f16, __half)
