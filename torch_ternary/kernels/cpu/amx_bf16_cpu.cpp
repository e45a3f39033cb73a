// torch-ternary CPU kernel: the large-M 16-bit ternary linear on AMX-BF16 (tdpbf16ps), bf16 activations as they are.
// Built into the same extension as ternary_cpu.cpp (which binds the entry points); the Python side
// (torch_ternary/kernels/cpu/__init__.py) sends torch_ternary::linear here for bfloat16 activations with at least
// AMX_BF16_MIN_ROWS tokens and per-channel / per-tensor scales, on CPUs with AMX-BF16.
//
// WHY. bf16 activations times ternary weights q in {-1, 0, +1} are exact products, so no int8 "limbs" are needed:
// y = (sum_k x_k * q_k) * s + bias with the sum in float32 (AMX accumulates the exact products in float32),
// one tile instruction where the int8 path spends two (a bf16 token is two int8 limbs), and no activation pass
// at all: the A tiles are loaded straight from x. ACCURACY: the float32 sum, then the float32 epilogue, then one
// rounding to bf16 -- torch's dense bf16 linear makes that rounding too, after rounding every weight s * q to bf16.
// (AMX-BF16 treats bf16 subnormal inputs, |x| < 1.2e-38, as zero.)
//
// WEIGHT LAYOUT (read as stored, never repacked; docs/format.md): uint8 packed[N][Kp/4], row n is Kp/16
// little-endian 32-bit words, word w holds weights k = 16w + j as 2-bit codes c = q + 1 (pad slots c = 1) in
// slot 8*(j%2) + j/2. So (word >> 2p) & 0x00030003 holds, in its two 16-bit halves, the codes of the natural
// pair k = 16w + 2p, 16w + 2p + 1 (p = 0..7): exactly the (even, odd) pair a tdpbf16ps B row wants.
//
// DECODE (decode_bf16). For 16 weight rows and one 64-byte chunk (16 words): load the 16 rows' chunks (rows past
// N and words past the row read as code 1, weight 0), transpose them as a 16 x 16 dword block (amx_tiles.h) so
// that vector w holds word w of the 16 rows, then for p = 0..7 shift, mask, and turn each 16-bit code into the
// bf16 of q with one vpermw table lookup (0 -> -1.0, 1 -> 0, 2 -> +1.0). Each result is B row 8*(w%2) + p of
// the 32-weight step w/2: B scratch [16 row tiles][KBT steps][16 pair rows][16 weight rows][2 bf16], transient
// (512 KB a thread); the resident weight stays 2-bit.
//
// TILES AND BLOCKING. The tile shape of amx_tiles.h (all 16 rows x 64 bytes): A = 16 tokens x 32 bf16 (one K
// step), B = one decoded step of 16 weight rows, C = 16 x 16 float32. x is first copied into A tiles
// ([16-token group][step][16][32], zero past M and K: one contiguous KB a tile load; loading 16 rows of x at
// its own stride was measured to cost about as much as the tile products themselves). Tokens go in chunks of
// `chunk` (the Python side's AMX_BF16_CHUNK_TOKENS; copied to A tiles, then every weight block runs on them, then
// the next chunk): a thread's float32 C block (chunk x 256: 1 MB for 1024 tokens) stays in L2 while the K blocks
// accumulate into it (unchunked, 4096 tokens made it 4 MB: 12288 -> 3072 took 4.7x, 3072 -> 12288 4.3x-8.6x the
// time of 1024 tokens); each chunk decodes the weights again. Per thread block of
// NBT = 256 weight rows (torch's intra-op pool splits the blocks: at::parallel_for, so torch.set_num_threads
// applies) and per K block of KBT = 16 steps (512 weights): decode the block's B (256 KB), then for groups of
// MBT = 64 tokens (their 64 KB K block stays in L2 while all 8 pairs of row tiles use it) 2 x 2 C tiles
// accumulate over the K block (loaded from / stored to the block's float32 C buffer between K blocks). The
// tile loads, not the products, bound it (4 loads of 1 KB a 4 products; from L2). The epilogue multiplies by
// the weight scale, adds the bias and rounds to bf16 (nearest even, NaN -> 0x7FC0). While a token group is
// swept, every row-tile pair prefetches (prefetcht1) two lines of each of the next group's A tiles, so the
// prefetch is spread over the sweep (on the VM's current host, where a tile product takes 4.3 ns, KBT 32 -> 16
// and the spread prefetch were 3-9 % faster on 8 of 10 FLUX shape rows at M = 1024 / 4096 and 1-2 % slower on
// two: benchmarks/cpu_kernels_ab.py).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "amx_tiles.h"

namespace {

using namespace torch_ternary_amx;

constexpr int64_t NBT = 256;  // weight rows of a thread block (16 row tiles of 16)
constexpr int64_t KBT = 16;   // 32-weight steps of a K block (512 weights; a multiple of 8 steps = one chunk)
constexpr int64_t MBT = 64;   // tokens whose K block (128 KB) stays in L2 while the 8 row-tile pairs sweep past
constexpr int64_t kStepElems = 16 * 32;  // bf16 elements of one B step tile (16 pair rows x 32)

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq")

// weight rows [n0, n0 + NBT) (weight 0 past N), steps [t0, t0 + nt) (t0 a multiple of 8) -> B scratch
void decode_bf16(const uint8_t* W, int64_t ldw, int64_t words, int64_t n0, int64_t N, int64_t t0, int64_t nt,
                 uint16_t* B) {
  const __m512i pad = _mm512_set1_epi32(0x55555555);  // codes 1 everywhere: weight 0
  const __m512i pair = _mm512_set1_epi32(0x00030003);
  // the bf16 of q = c - 1 at 16-bit index c: [0] = -1.0 (0xBF80), [1] = 0, [2] = +1.0 (0x3F80)
  const __m512i table = _mm512_setr_epi32(0x0000BF80, 0x00003F80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  for (int64_t tile = 0; tile < NBT / 16; ++tile) {
    for (int64_t c = t0 / 8; c < (t0 + nt + 7) / 8; ++c) {
      __m512i r[16];
      for (int rr = 0; rr < 16; ++rr) {
        const int64_t n = n0 + tile * 16 + rr;
        const int64_t valid = n < N ? words - c * 16 : 0;
        const __mmask16 lanes = valid >= 16 ? __mmask16(0xFFFF) : (valid > 0 ? __mmask16((1u << valid) - 1) : __mmask16(0));
        r[rr] = _mm512_mask_loadu_epi32(pad, lanes, W + (valid > 0 ? n * ldw + c * 64 : 0));
      }
      transpose16x16(r);  // r[w]: word w of the 16 rows
      for (int w = 0; w < 16; ++w) {
        const int64_t t = c * 8 + w / 2 - t0;
        if (t >= nt) break;
        uint16_t* dst = B + (tile * KBT + t) * kStepElems + (w % 2) * 8 * 32;
        for (int p = 0; p < 8; ++p) {
          const __m512i codes = _mm512_and_si512(_mm512_srli_epi32(r[w], 2 * p), pair);
          _mm512_store_si512(dst + p * 32, _mm512_permutexvar_epi16(codes, table));
        }
      }
    }
  }
}

// C [groups * 16][NBT] float32 (+)= A (tiles [group][step][16][32]) x B, steps [t0, t0 + nt) of `steps`
void kblock_bf16(const uint16_t* A, int64_t steps, int64_t groups, const uint16_t* B, int64_t t0, int64_t nt, float* C,
                 bool first) {
  constexpr int stride_c = NBT * 4;
  for (int64_t gb = 0; gb < groups; gb += MBT / 16)
    for (int64_t tile = 0; tile < NBT / 16; tile += 2)
      for (int64_t g = gb; g < std::min(groups, gb + MBT / 16); g += 2) {
        float* c00 = C + g * 16 * NBT + tile * 16;
        float* c01 = c00 + 16;
        float* c10 = c00 + 16 * NBT;
        float* c11 = c10 + 16;
        if (first) { _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3); }
        else { _tile_loadd(0, c00, stride_c); _tile_loadd(1, c01, stride_c); _tile_loadd(2, c10, stride_c); _tile_loadd(3, c11, stride_c); }
        const uint16_t* b0 = B + tile * KBT * kStepElems;
        const uint16_t* b1 = b0 + KBT * kStepElems;
        const uint16_t* a0 = A + (g * steps + t0) * 512;
        const uint16_t* a1 = a0 + steps * 512;
        // the last pair of row tiles over this token group prefetches the next group's A tiles into L2 (the first
        // pass over a group otherwise waits for them from L3 / DRAM: measured 1.04x vs 0.91x torch on 12288 -> 3072)
        const bool prefetch = g + MBT / 16 < groups;
        const char* p0 = reinterpret_cast<const char*>(a0 + (MBT / 16) * steps * 512) + tile * 64;
        const char* p1 = reinterpret_cast<const char*>(a1 + (MBT / 16) * steps * 512) + tile * 64;
        for (int64_t t = 0; t < nt; ++t) {
          if (prefetch) {
            _mm_prefetch(p0 + t * 1024, _MM_HINT_T1);
            _mm_prefetch(p0 + t * 1024 + 64, _MM_HINT_T1);
            _mm_prefetch(p1 + t * 1024, _MM_HINT_T1);
            _mm_prefetch(p1 + t * 1024 + 64, _MM_HINT_T1);
          }
          _tile_loadd(4, a0 + t * 512, 64);
          _tile_loadd(5, a1 + t * 512, 64);
          _tile_loadd(6, b0 + t * kStepElems, 64);
          _tile_loadd(7, b1 + t * kStepElems, 64);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, c00, stride_c); _tile_stored(1, c01, stride_c);
        _tile_stored(2, c10, stride_c); _tile_stored(3, c11, stride_c);
      }
}

// y[m][n0 + n] = bf16(C[m][n] * w + bias), n < nb
void epilogue_bf16(const float* C, int64_t M, int64_t n0, int64_t nb, const float* S, bool per_tensor,
                   const uint16_t* bias, uint16_t* Y, int64_t N) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < nb; n += 16) {
      const __mmask16 k = nb - n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (nb - n)) - 1);
      const int64_t col = n0 + n;
      const __m512 w = per_tensor ? _mm512_set1_ps(S[0]) : _mm512_maskz_loadu_ps(k, S + col);
      __m512 out = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, C + m * NBT + n), w);
      if (bias)
        out = _mm512_add_ps(out, bf16_to_f32(_mm256_maskz_loadu_epi16(k, bias + col)));
      _mm256_mask_storeu_epi16(Y + m * N + col, k, bf16_rne(out));
    }
}

#pragma GCC pop_options

struct Aligned16 {  // 64-byte aligned uint16 scratch (AVX-512 aligned stores), zero-filled
  std::vector<uint16_t> raw;
  uint16_t* ptr;
  explicit Aligned16(size_t n) : raw(n + 32, 0) {
    ptr = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(raw.data()) + 63) & ~uintptr_t(63));
  }
};

}  // namespace

bool amx_bf16_available() { return amx_bf16_usable(); }

// y = x @ (scale * q).T (+ bias): x bfloat16 [M, K] (unit last stride), packed uint8 [N, Kp/4], scale float32
// [S_n, 1] (S_n in {1, N}), bias bfloat16 [N] or None -> y bfloat16 [M, N]; tokens in chunks of `chunk` (>= 1).
// The caller checks the arguments.
torch::Tensor ternary_linear_bf16_amx(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& scale,
                                     const c10::optional<torch::Tensor>& bias, int64_t K, int64_t chunk) {
  TORCH_CHECK(amx_bf16_usable(), "ternary_linear_bf16_amx: this CPU (or process) has no AMX-BF16");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.dim() == 2 && x.stride(1) == 1 && x.size(1) == K,
              "ternary_linear_bf16_amx: x must be bfloat16 [M, K] with a unit last stride");
  TORCH_CHECK(scale.size(1) == 1, "ternary_linear_bf16_amx: per-channel / per-tensor scales only");
  TORCH_CHECK(chunk >= 1, "ternary_linear_bf16_amx: chunk must be >= 1 token");
  const int64_t M = x.size(0), N = packed.size(0), ldw = packed.size(1), words = ldw / 4;
  auto y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const int64_t K32 = (K + 31) / 32 * 32, steps = K32 / 32;
  const uint16_t* X = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const int64_t ldx = x.stride(0);
  const uint8_t* W = packed.data_ptr<uint8_t>();
  const float* S = scale.data_ptr<float>();
  const uint16_t* Bias = bias.has_value() ? reinterpret_cast<const uint16_t*>(bias->data_ptr<at::BFloat16>()) : nullptr;
  uint16_t* Y = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
  // A in tiles: [group][step][16 tokens][32 bf16], zero past the chunk and K (a contiguous 1 KB a tile load:
  // loading 16 rows of x at its own stride instead costs about as much as the tile products themselves)
  const int64_t chunk_groups_max = (std::min(M, chunk) + 31) / 32 * 2;  // the C tiles take 32 tokens at a time
  Aligned16 A(size_t(chunk_groups_max) * steps * 512);
  for (int64_t mc0 = 0; mc0 < M; mc0 += chunk) {
    const int64_t mc = std::min(chunk, M - mc0), groups = (mc + 31) / 32 * 2;
    at::parallel_for(0, groups * 16, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t m = r0; m < r1; ++m) {
        uint16_t* dst = A.ptr + (m / 16) * steps * 512 + (m % 16) * 32;
        if (m >= mc) {  // rows of the last C tile past M: zero (the scratch is reused by every chunk)
          for (int64_t t = 0; t < steps; ++t) std::memset(dst + t * 512, 0, 64);
          continue;
        }
        const uint16_t* src = X + (mc0 + m) * ldx;
        for (int64_t t = 0; t < steps; ++t) {
          const int64_t take = std::min<int64_t>(32, K - t * 32);
          std::memcpy(dst + t * 512, src + t * 32, size_t(take) * 2);
          if (take < 32) std::memset(dst + t * 512 + take, 0, size_t(32 - take) * 2);
        }
      }
    });
    at::parallel_for(0, (N + NBT - 1) / NBT, 1, [&](int64_t b0, int64_t b1) {
      amx_configure();
      std::vector<float> C(groups * 16 * NBT);
      Aligned16 B(size_t(NBT / 16) * KBT * kStepElems);
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t n0 = blk * NBT;
        for (int64_t t0 = 0; t0 < steps; t0 += KBT) {
          const int64_t nt = std::min(KBT, steps - t0);
          decode_bf16(W, ldw, words, n0, N, t0, nt, B.ptr);
          kblock_bf16(A.ptr, steps, groups, B.ptr, t0, nt, C.data(), t0 == 0);
        }
        epilogue_bf16(C.data(), mc, n0, std::min(NBT, N - n0), S, scale.size(0) == 1, Bias, Y + mc0 * N, N);
      }
      amx_release();
    });
  }
  return y;
}
