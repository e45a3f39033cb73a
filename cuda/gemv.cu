// torch-ternary: skinny GEMM (GEMV up to M = 16 per tile) y[M, N] = x[M, K] @ (s * q)[N, K]^T + b
// for bf16 / fp16 activations, decoding the 2-bit weights in registers and accumulating in fp32
// on the tensor cores (mma.sync m16n8k16, weights as the A operand, activations as B).
//
// Layout (common.cuh, docs/format.md): packed codes u32 [N, kblocks] (kblocks = Kp/16 words a
// row, 16 weights a word, weight j in slot 8*(j%2) + j/2); scales float32 [S_n, S_k]; x [M, Kp]
// contiguous, 16-byte aligned, ZERO past K (the host pads it when K % 16 != 0, since pad weights
// are 0 but 0 * inf would not be); y [M, N] contiguous; bias [N] or null.
//
// Thread mapping. A block owns 16*R output rows (R m16 tiles) and 8*NT activation rows (NT n8
// tiles: NT = 1 for M <= 8, 2 for M <= 16; grid.y walks further tiles of 8*NT rows). Its W warps
// (W = blockDim.x / 32 <= 8) split K: the row's words are cut into chunks of 4*VW words and warp w
// takes chunks w, w + W, ... (so together the warps stream each row front to back). In a chunk,
// lane (g = lane/4, t = lane%4) loads VW words (one 128-bit load for VW = 4, else 32-bit) of
// row 16r + g and of row 16r + g + 8: the four lanes of a quad cover 4*VW consecutive words
// (16*VW contiguous bytes a row), every byte is loaded once, and the next chunk is prefetched into
// registers while this one is decoded.
//
// The k order inside an mma is free as long as A and B agree, so instead of the identity order
// (which would need pairs t and t+4 of a word shared by four lanes), lane (g, t) feeds each mma
// from its OWN word kb: for step s = 0..3 the k slots (2t, 2t+1) get weights (4s, 4s+1) and the
// slots (2t+8, 2t+9) get weights (4s+2, 4s+3) of word kb, i.e. the decoded pairs 2s and 2s+1:
//
//   A regs (rows g / g+8):  a0 = pair 2s of row g,  a1 = pair 2s of row g+8,
//                           a2 = pair 2s+1 of row g, a3 = pair 2s+1 of row g+8
//   B regs (column g):      b0 = x[g][16kb + 4s .. +1], b1 = x[g][16kb + 4s + 2 .. +3]
//
// so a word needs no shuffles and its x slice x[g][16kb .. 16kb+15] is two 128-bit loads
// (L1/L2 hits: every block reads all of x). Decoding a pair is shift + LOP3 + one half2 fma
// (`decode_pair`); per-group scales multiply the pair by the half2 (s, s) (exact: the weights equal
// the reference's `q.to(dtype) * s.to(dtype)`), per-tensor / per-channel scales are applied in
// fp32 at the end. Lanes whose word lies past the row (K tail) use weight 0 and x 0.
//
// Reductions: the K sum inside a warp is done by the mma itself (no warp shuffles needed: each mma
// adds 16 k of 16 rows x 8 columns into the fp32 accumulators); across the W warps of a block it
// goes through shared memory once, at the end.
// Epilogue: each warp's fp32 fragments go to shared memory, the block sums the W partial results,
// applies the fp32 scale (S_k == 1) and bias, rounds once to the output dtype and stores y.
// Output rows >= N and activation rows >= M are computed from clamped (valid) addresses and never
// stored; an mma column only depends on its own activation row, so nothing leaks across rows.
#include "common.cuh"

namespace tt {

constexpr int kSkinnyMaxWarps = 8;

template <int VW>
__device__ __forceinline__ void load_words(u32 (&dst)[VW], const u32* __restrict__ p) {
  if constexpr (VW == 4) {
    const uint4 v = ldg128(p);
    dst[0] = v.x;
    dst[1] = v.y;
    dst[2] = v.z;
    dst[3] = v.w;
  } else {
#pragma unroll
    for (int i = 0; i < VW; ++i) dst[i] = ldg32(p + i);
  }
}

template <typename T, int R, int NT, int VW>
__device__ __forceinline__ void skinny_impl(T* __restrict__ y, const T* __restrict__ x, const u32* __restrict__ wq,
                                            const float* __restrict__ scale, const T* __restrict__ bias, int M,
                                            int N, int kblocks, int s_row_stride, int grouped, GroupDiv gdiv) {
  typedef Half2Traits<T> Tr;
  constexpr int kChunk = 4 * VW;  // words of a row per warp step
  __shared__ float red[kSkinnyMaxWarps][R * NT * 4][32];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int row0 = blockIdx.x * (16 * R);
  const int m0 = blockIdx.y * (8 * NT);

  const u32* wlo[R];
  const u32* whi[R];
  int nlo[R], nhi[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    nlo[r] = min(row0 + 16 * r + g, N - 1);
    nhi[r] = min(row0 + 16 * r + g + 8, N - 1);
    wlo[r] = wq + (long long)nlo[r] * kblocks;
    whi[r] = wq + (long long)nhi[r] * kblocks;
  }
  const T* xrow[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) xrow[nt] = x + (long long)min(m0 + 8 * nt + g, M - 1) * (16 * kblocks);

  float acc[R][NT][4];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[r][nt][e] = 0.f;

  const int nchunks = (kblocks + kChunk - 1) / kChunk;
  u32 cur_lo[R][VW], cur_hi[R][VW];
  {
    const int kb = warp * kChunk + t * VW;
    if (warp < nchunks && kb < kblocks) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        load_words<VW>(cur_lo[r], wlo[r] + kb);
        load_words<VW>(cur_hi[r], whi[r] + kb);
      }
    }
  }

  for (int c = warp; c < nchunks; c += nwarps) {
    const int kb0 = c * kChunk + t * VW;  // this lane's first word (same for all lanes with this t)
    const bool valid = kb0 < kblocks;     // VW = 4 needs kblocks % 4 == 0: all VW words valid or none

    // Prefetch the next chunk's words.
    u32 nxt_lo[R][VW], nxt_hi[R][VW];
    const int kbn = kb0 + nwarps * kChunk;
    if (c + nwarps < nchunks && kbn < kblocks) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        load_words<VW>(nxt_lo[r], wlo[r] + kbn);
        load_words<VW>(nxt_hi[r], whi[r] + kbn);
      }
    }

#pragma unroll
    for (int wi = 0; wi < VW; ++wi) {
      const int kb = valid ? kb0 + wi : 0;
      uint4 xv[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        if (valid) {
          xv[nt][0] = ldg128(xrow[nt] + 16 * kb);
          xv[nt][1] = ldg128(xrow[nt] + 16 * kb + 8);
        } else {
          xv[nt][0] = make_uint4(0u, 0u, 0u, 0u);
          xv[nt][1] = make_uint4(0u, 0u, 0u, 0u);
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const u32 lo = valid ? cur_lo[r][wi] : 0x55555555u;  // code 1 everywhere: weight 0
        const u32 hi = valid ? cur_hi[r][wi] : 0x55555555u;
        u32 slo = 0u, shi = 0u;
        if (grouped) {
          const int col = gdiv(kb);
          slo = splat_scale<T>(__ldg(scale + (long long)nlo[r] * s_row_stride + col));
          shi = splat_scale<T>(__ldg(scale + (long long)nhi[r] * s_row_stride + col));
        }
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          u32 a[4];
          a[0] = decode_pair<T>(lo >> (4 * s));
          a[1] = decode_pair<T>(hi >> (4 * s));
          a[2] = decode_pair<T>(lo >> (4 * s + 2));
          a[3] = decode_pair<T>(hi >> (4 * s + 2));
          if (grouped) {
            a[0] = scale_pair<T>(a[0], slo);
            a[1] = scale_pair<T>(a[1], shi);
            a[2] = scale_pair<T>(a[2], slo);
            a[3] = scale_pair<T>(a[3], shi);
          }
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            const uint4& xs = xv[nt][s >> 1];
            const u32 b0 = (s & 1) ? xs.z : xs.x;
            const u32 b1 = (s & 1) ? xs.w : xs.y;
            Tr::mma(acc[r][nt], a, b0, b1);
          }
        }
      }
    }

#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int i = 0; i < VW; ++i) {
        cur_lo[r][i] = nxt_lo[r][i];
        cur_hi[r][i] = nxt_hi[r][i];
      }
  }

  // ---- cross-warp reduction and epilogue
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) red[warp][(r * NT + nt) * 4 + e][lane] = acc[r][nt][e];
  __syncthreads();

  for (int i = threadIdx.x; i < R * NT * 4 * 32; i += blockDim.x) {
    const int ln = i & 31;
    const int idx = i >> 5;  // (r * NT + nt) * 4 + e
    float v = 0.f;
    for (int w = 0; w < nwarps; ++w) v += red[w][idx][ln];
    const int e = idx & 3;
    const int nt = (idx >> 2) % NT;
    const int r = (idx >> 2) / NT;
    // C fragment of m16n8: c0, c1 = (row g, cols 2t, 2t+1); c2, c3 = (row g+8, cols 2t, 2t+1)
    const int n = row0 + 16 * r + (ln >> 2) + ((e & 2) ? 8 : 0);
    const int m = m0 + 8 * nt + 2 * (ln & 3) + (e & 1);
    if (n < N && m < M) {
      if (!grouped) v *= __ldg(scale + (long long)n * s_row_stride);
      if (bias != nullptr) v += Tr::to_float(bias[n]);
      y[(long long)m * N + n] = Tr::from_float(v);
    }
  }
}

}  // namespace tt

// ------------------------------------------------------------------------------ entry points
// y [M, N], x [M, 16*kblocks] (zero past K), packed u32 [N, kblocks], scale float32 [S_n, S_k],
// bias [N] or null. s_row_stride: S_k if S_n == N else 0. grouped: S_k > 1 (then gshift / gmagic
// encode the division by G/16, see GroupDiv). Launch: grid (ceil(N / (16R)), ceil(M / (8NT))),
// block (32 * W) with W <= 8; VW = 4 needs kblocks % 4 == 0 and a 16-byte aligned `packed`.
#define TT_SKINNY(NAME, T, R, NT, VW)                                                                          \
  extern "C" __global__ void __launch_bounds__(256, 2) NAME(                                                    \
      T* __restrict__ y, const T* __restrict__ x, const tt::u32* __restrict__ packed,                          \
      const float* __restrict__ scale, const T* __restrict__ bias, int M, int N, int kblocks, int s_row_stride, \
      int grouped, int gshift, unsigned int gmagic) {                                                           \
    tt::skinny_impl<T, R, NT, VW>(y, x, packed, scale, bias, M, N, kblocks, s_row_stride, grouped,            \
                                  tt::GroupDiv{gshift, gmagic});                                               \
  }

#define TT_SKINNY_ALL_VW(PREFIX, T, R, NT)       \
  TT_SKINNY(PREFIX##_r##R##_n##NT##_v4, T, R, NT, 4) \
  TT_SKINNY(PREFIX##_r##R##_n##NT##_v1, T, R, NT, 1)

#define TT_SKINNY_ALL(PREFIX, T)   \
  TT_SKINNY_ALL_VW(PREFIX, T, 1, 1) \
  TT_SKINNY_ALL_VW(PREFIX, T, 1, 2) \
  TT_SKINNY_ALL_VW(PREFIX, T, 2, 1) \
  TT_SKINNY_ALL_VW(PREFIX, T, 2, 2)

TT_SKINNY_ALL(tt_skinny_bf16, __nv_bfloat16)
TT_SKINNY_ALL(tt_skinny_f16, __half)
