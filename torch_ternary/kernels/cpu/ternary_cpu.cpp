// torch-ternary CPU kernels: ternary linear layers straight from the 2-bit packed weights.
//
// WEIGHT LAYOUT (read as stored, never repacked; docs/format.md): uint8 packed[N][Kp/4], Kp = ceil(K/16)*16.
// Row n is Kp/16 little-endian 32-bit words; word w holds weights k = 16w + j (j = 0..15) as 2-bit codes
// c = q + 1 (q in {-1,0,1}; pad slots hold c = 1) in slot s(j) = 8*(j%2) + j/2 (bits 2s..2s+1).
//
// DECODE IN REGISTERS. (word >> 2i) & 0x03030303 leaves, in byte b, the code of slot 4b+i, i.e. of the
// weights j = 2i, 2i+8, 2i+1, 2i+9 of the word (bytes 0..3). A 64-byte "chunk" (16 words, 256 weights)
// gives four such vectors (i = 0..3); subtracting 1 from every byte gives the signed weights q. Nothing
// is ever written back: the resident weight stays 2 bits a weight plus its float32 scales.
//
// ACTIVATIONS are quantized per row (a token; in 16-bit mode also a "limb", below) to int8 v in [-127, 127]
// in the same permuted order, so that one VNNI instruction (vpdpbusd: u8 x s8 -> int32, four products a
// lane) multiplies lane l of a decoded weight vector with the four activations of the same four weights:
// prepared row layout [chunk][i = 0..3][word 0..15][4 bytes], K padded to whole chunks with v = 0.
// * per-channel / per-tensor scales: the codes c = q + 1 (0..2, unsigned) times v (signed):
//   sum_k q*v = sum_k c*v - sum_k v, the last sum taken per activation row while it is quantized. Pad
//   slots (c = 1) meet v = 0 and add nothing.
// * per-group scales: the signed weights q = c - 1 times u = v + 128 (unsigned, pad u = 128), with one
//   extra activation row of u = 128 everywhere: its product is 128 * (the group-scaled weight row sums),
//   the exact correction sum_k q*u - 128 * sum_k q = sum_k q*v, which then needs no per-group term.
//
// MODES
// * int8 (torch_ternary::linear_a8): v = clamp(round_half_even(x / s), -127, 127), s = amax/127 per token
//   (s = 1 when amax < 2^-100, NaN -> 0): exactly the plain-torch reference; the epilogue
//   y = dtype(((float)acc * s) * w + bias) with the exact int32 acc = sum q*v is bit-exact with it.
// * 16bit (torch_ternary::linear): each token x is split into L int8 "limbs", x ~= sum_l s_l v_l with
//   s_1 = amax/127, s_{l+1} = s_l/254 (v_{l+1} quantizes the remainder), so the error is at most
//   amax * 0.5 / (127 * 254^(L-1)) an element (L = 3 for float32, 2 for bf16 / fp16 inputs); the limbs are
//   rows of the same integer product and y = sum_l s_l * (scaled int sums) + bias.
//   ACCURACY: the rms error of an output is then about (amax / rms) * 8.9e-6 / 254^(L-2) of its size, while
//   torch's dense linear in bf16 / fp16 loses ~1.1e-3 / 1.4e-4 (the weight s * q rounded to the dtype) and
//   a float32 result must stay within 1e-5: a call whose most spread token has amax / rms above
//   `range_limit` (from the Python side, per dtype) gets one more limb for every token.
//
// BLOCKING AND THREADS. Output rows are split in blocks of NB = 64 over torch's intra-op pool
// (at::parallel_for: honours torch.set_num_threads). In a block, a tile of MR activation rows x NR = 4
// weight rows keeps MR*NR int32 accumulator vectors (16 lanes = 16 words) over the whole K, the weight
// chunk of each row is loaded once per shift i (L1) and decoded once for the MR rows; lanes are summed
// at the end (per-channel / per-tensor scales), or, with per-group scales, every chunk's lanes are
// scaled by their group's scale into float accumulators. The int32 / float results of the block go to a
// small buffer and a vectorized epilogue applies activation scales, weight scales, bias and the cast.
//
// AMX (per-channel / per-tensor scales, many rows): the same prepared activations in a tiled layout and
// tdpbusd on 16 x 64-byte tiles; the weights are decoded in registers into a transient B scratch (the
// section "AMX" below documents it). bf16 tokens in 16-bit mode skip the limbs on CPUs with AMX-BF16: their own
// kernel, amx_bf16_cpu.cpp (tdpbf16ps on x as it is), chosen by the Python side. amx_tiles.h: what both share.
//
// ISA. Four variants of the same arithmetic in this one file, chosen at run time (cpu_isas() / the Python
// side: TORCH_TERNARY_CPU_ISA): amx (AMX-INT8: tdpbusd), avx512 (AVX-512 F/BW/VL/DQ + VNNI: vpdpbusd), avx2
// (vpmaddubsw + vpmaddwd), scalar (portable C++). The integer sums are exact in every variant, so per-channel /
// per-tensor results (and linear_a8) are identical across them; with per-group scales the float sums of the
// scaled words are added in a different order per variant (differences of float32 rounding only).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include "amx_tiles.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int kChunkWeights = 256;  // one 64-byte packed chunk: 16 words of 16 weights
constexpr int kChunkBytes = 64;
constexpr int NR = 4;               // weight rows of a tile
constexpr int64_t NB = 64;          // weight rows of a thread block
constexpr float kTinyAmax = 7.888609052210118e-31f;  // 2^-100, as ternary_linear_a8.TINY_AMAX

// offset, in a prepared chunk, of the activation of weight j (0..255) of the chunk
struct Perm {
  int32_t off[kChunkWeights];
  Perm() {
    for (int kk = 0; kk < kChunkWeights; ++kk) {
      int w = kk / 16, j = kk % 16;
      int slot = 8 * (j % 2) + j / 2;
      int i = slot % 4, b = slot / 4;
      off[kk] = i * 64 + w * 4 + b;
    }
  }
};
const Perm kPerm;

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2, amx = 3 };

inline float half_to_float(uint16_t h, bool bf16) {
  if (bf16) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  return static_cast<float>(c10::Half(h, c10::Half::from_bits()));
}

// ---------------------------------------------------------------------------------------------------
// Activation preparation: x rows -> prepared rows (token x limb) of v (offset 0) or u = v + 128 (offset
// 128, per-group scales: then one last row of u = 128 everywhere follows, see the file header).
// a 64-byte aligned buffer (AMX tile rows and AVX-512 stores want whole cache lines)
template <typename T>
struct Aligned {
  std::vector<T> raw;
  T* ptr = nullptr;
  size_t n = 0;
  void assign(size_t count, T value) {
    raw.assign(count + 64 / sizeof(T), value);
    ptr = reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(raw.data()) + 63) & ~uintptr_t(63));
    n = count;
  }
  T* data() { return ptr; }
  const T* data() const { return ptr; }
  size_t size() const { return n; }
};

struct Prepared {
  Aligned<uint8_t> u;       // [rows (+ 1)][kc * 256]
  std::vector<float> s;     // [rows] scale of each row (token x limb)
  std::vector<int32_t> t;   // [rows] sum_k v of each row
  int64_t rows = 0, kc = 0, limbs = 1;
  int offset = 0;
  // layout: rows (row r at r * kc * 256, step s = 4 c + i at s * 64), or AMX tiles (16-row groups:
  // row r at ((r / 16) * steps) * 1024 + (r % 16) * 64, step s at s * 1024): either way a step's 64 bytes are
  // the 16 words x 4 bytes of one (chunk, shift)
  bool tiled = false;
  int64_t step_stride() const { return tiled ? 1024 : 64; }
  uint8_t* row_ptr(int64_t r) {
    return u.data() + (tiled ? ((r / 16) * kc * 4) * 1024 + (r % 16) * 64 : r * kc * kChunkWeights);
  }
};

// position of the activation of weight k in a prepared row: its step's offset plus its place in the step
inline int64_t prepared_offset(int64_t k, int64_t ss) {
  const int32_t off = kPerm.off[k % kChunkWeights];
  return ((k / kChunkWeights) * 4 + off / 64) * ss + off % 64;
}

// one token: r [K] float (overwritten by the remainders), out: `limbs` prepared rows of `stride` bytes
// activation k of a row (r[k], scale s) -> its int8 code, stored at its prepared place in o; returns the code.
// 16-bit mode: r[k] becomes the remainder, for the next limb.
inline int quantize_element(float* r, int64_t k, float s, bool mode_int8, int offset, uint8_t* o, int64_t ss) {
  float q = std::nearbyint(r[k] / s);  // a division, as the reference; round half to even (the default mode)
  if (std::isnan(q)) q = 0.0f;
  q = q < -127.0f ? -127.0f : (q > 127.0f ? 127.0f : q);
  o[prepared_offset(k, ss)] = uint8_t(int(q) + offset);
  if (!mode_int8) r[k] = r[k] - q * s;
  return int(q);
}

void quantize_row_scalar(float* r, int64_t K, int limbs, bool mode_int8, float s, int offset, Prepared& p,
                         int64_t row0, float* scales, int32_t* sums) {
  const int64_t ss = p.step_stride();
  for (int l = 0; l < limbs; ++l) {
    scales[l] = s;
    int32_t sum = 0;
    uint8_t* o = p.row_ptr(row0 + l);
    for (int64_t k = 0; k < K; ++k) sum += quantize_element(r, k, s, mode_int8, offset, o, ss);
    sums[l] = sum;
    s = s / 254.0f;
  }
}

// elements [k0, K) of one activation row as float32 (from float32 / bf16 / fp16 at element offset `start`) into r,
// folding them into the row's max |x| and whether it holds a NaN
void load_row_scalar(const void* xv, at::ScalarType dt, int64_t start, int64_t k0, int64_t K, float* r, float& amax,
                     bool& nan) {
  for (int64_t k = k0; k < K; ++k) {
    const float v = dt == at::kFloat ? static_cast<const float*>(xv)[start + k]
                                     : half_to_float(static_cast<const uint16_t*>(xv)[start + k], dt == at::kBFloat16);
    r[k] = v;
    nan |= std::isnan(v);
    amax = std::fabs(v) > amax ? std::fabs(v) : amax;
  }
}

// The limb loop of the vector variants: per limb, `word(r + k, s, bytes)` quantizes the 16 activations of one word
// (updating the remainders in 16-bit mode) into 16 bytes in prepared order and adds their codes to its vector sum,
// `take_sum()` returns that sum and clears it; the tail word takes the scalar code.
template <typename WordFn, typename SumFn>
inline void quantize_limbs(float* r, int64_t K, int limbs, bool mode_int8, float s, int offset, Prepared& p,
                           int64_t row0, float* scales, int32_t* sums, WordFn word, SumFn take_sum) {
  const int64_t ss = p.step_stride();
  const int64_t full = K / 16 * 16;
  for (int l = 0; l < limbs; ++l) {
    scales[l] = s;
    uint8_t* o = p.row_ptr(row0 + l);
    for (int64_t k = 0; k < full; k += 16) {
      uint32_t d[4];
      word(r + k, s, d);
      const int64_t w = k / 16;
      uint8_t* base = o + (w / 16) * 4 * ss + (w % 16) * 4;
      for (int i = 0; i < 4; ++i) std::memcpy(base + i * ss, &d[i], 4);
    }
    int32_t sum = take_sum();
    for (int64_t k = full; k < K; ++k) sum += quantize_element(r, k, s, mode_int8, offset, o, ss);  // the tail word
    sums[l] = sum;
    s = s / 254.0f;
  }
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
void quantize_row_avx512(float* r, int64_t K, int limbs, bool mode_int8, float s, int offset, Prepared& p,
                         int64_t row0, float* scales, int32_t* sums) {
  // the 16 bytes of a word, in prepared order: dword i = weights (2i, 2i+8, 2i+1, 2i+9)
  const __m128i perm = _mm_setr_epi8(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  const __m128i off = _mm_set1_epi8(char(offset));
  __m512i vsum = _mm512_setzero_si512();
  auto word = [&](float* rk, float sl, uint32_t* d) {
    const __m512 sv = _mm512_set1_ps(sl);
    __m512 x = _mm512_loadu_ps(rk);
    __m512 q = _mm512_roundscale_ps(_mm512_div_ps(x, sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(q, q, _CMP_ORD_Q), q);  // NaN -> 0
    q = _mm512_min_ps(_mm512_max_ps(q, lo), hi);
    if (!mode_int8) _mm512_storeu_ps(rk, _mm512_sub_ps(x, _mm512_mul_ps(q, sv)));  // as the scalar code
    const __m512i qi = _mm512_cvtps_epi32(q);
    vsum = _mm512_add_epi32(vsum, qi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d), _mm_shuffle_epi8(_mm_xor_si128(_mm512_cvtsepi32_epi8(qi), off), perm));
  };
  auto take_sum = [&]() {
    const int32_t out = _mm512_reduce_add_epi32(vsum);
    vsum = _mm512_setzero_si512();
    return out;
  };
  quantize_limbs(r, K, limbs, mode_int8, s, offset, p, row0, scales, sums, word, take_sum);
}
// one activation row as float32 (from float32 / bf16 / fp16 at element offset `start`), its max |x| and whether
// it holds a NaN
void load_row_avx512(const void* xv, at::ScalarType dt, int64_t start, int64_t K, float* r, float& amax, bool& nan) {
  __m512 vmax = _mm512_setzero_ps();
  __mmask16 vnan = 0;
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 x;
    if (dt == at::kFloat) x = _mm512_loadu_ps(static_cast<const float*>(xv) + start + k);
    else {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(xv) + start + k));
      x = dt == at::kBFloat16 ? torch_ternary_amx::bf16_to_f32(h) : _mm512_cvtph_ps(h);
    }
    _mm512_storeu_ps(r + k, x);
    vnan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    vmax = _mm512_max_ps(vmax, _mm512_abs_ps(x));
  }
  amax = _mm512_reduce_max_ps(vmax);
  nan = vnan != 0;
  load_row_scalar(xv, dt, start, k, K, r, amax, nan);  // the tail
}
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// the AVX2 twin of quantize_row_avx512: the same float operations (division, round half to even, NaN -> 0, clamp,
// remainder x - q * s), 8 floats a step, the same prepared bytes and sums
void quantize_row_avx2(float* r, int64_t K, int limbs, bool mode_int8, float s, int offset, Prepared& p,
                       int64_t row0, float* scales, int32_t* sums) {
  __m256i vsum = _mm256_setzero_si256();
  const __m128i off = _mm_set1_epi8(char(offset)), perm = _mm_setr_epi8(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  auto word = [&](float* rk, float sl, uint32_t* d) {
    __m256i qi[2];
    const __m256 sv = _mm256_set1_ps(sl);
    for (int h = 0; h < 2; ++h) {
      const __m256 x = _mm256_loadu_ps(rk + 8 * h);
      const __m256 q0 = _mm256_round_ps(_mm256_div_ps(x, sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m256 q = _mm256_min_ps(_mm256_max_ps(_mm256_and_ps(q0, _mm256_cmp_ps(q0, q0, _CMP_ORD_Q)), lo), hi);  // NaN -> 0
      if (!mode_int8) _mm256_storeu_ps(rk + 8 * h, _mm256_sub_ps(x, _mm256_mul_ps(q, sv)));  // as the scalar code
      qi[h] = _mm256_cvtps_epi32(q);
      vsum = _mm256_add_epi32(vsum, qi[h]);
    }
    const __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(qi[0], qi[1]), 0xD8);  // 16 int16, k order
    const __m128i b = _mm_packs_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d), _mm_shuffle_epi8(_mm_xor_si128(b, off), perm));
  };
  auto take_sum = [&]() {
    alignas(32) int32_t t[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t), vsum);
    vsum = _mm256_setzero_si256();
    int32_t out = 0;
    for (int32_t v : t) out += v;
    return out;
  };
  quantize_limbs(r, K, limbs, mode_int8, s, offset, p, row0, scales, sums, word, take_sum);
}

// one activation row as float32 (load_row_avx512's AVX2 twin)
void load_row_avx2(const void* xv, at::ScalarType dt, int64_t start, int64_t K, float* r, float& amax, bool& nan) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 vmax = _mm256_setzero_ps(), vnan = _mm256_setzero_ps();
  const float* xf = static_cast<const float*>(xv) + start;
  const uint16_t* xh = static_cast<const uint16_t*>(xv) + start;
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m128i h = dt == at::kFloat ? _mm_setzero_si128() : _mm_loadu_si128(reinterpret_cast<const __m128i*>(xh + k));
    const __m256 x = dt == at::kFloat ? _mm256_loadu_ps(xf + k)
                     : dt == at::kBFloat16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                                           : _mm256_cvtph_ps(h);
    _mm256_storeu_ps(r + k, x);
    vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    vmax = _mm256_max_ps(_mm256_and_ps(x, absmask), vmax);  // (a NaN first operand yields vmax)
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, vmax);
  for (float v : t) amax = v > amax ? v : amax;
  nan = nan || _mm256_movemask_ps(vnan) != 0;
  load_row_scalar(xv, dt, start, k, K, r, amax, nan);  // the tail
}
#pragma GCC pop_options

// one activation row into r (amax and nan as load_row_scalar), on the `vector` ISA (avx512, avx2, else scalar)
inline void load_row(const void* xv, at::ScalarType dt, int64_t start, int64_t K, float* r, float& amax, bool& nan,
                     Isa vector) {
  if (vector == Isa::avx512) load_row_avx512(xv, dt, start, K, r, amax, nan);
  else if (vector == Isa::avx2) load_row_avx2(xv, dt, start, K, r, amax, nan);
  else load_row_scalar(xv, dt, start, 0, K, r, amax, nan);
}

// max over the rows of x [M, K] of amax / rms (a token's dynamic range); NaN rows count as 0
double max_dynamic_range(const void* xv, at::ScalarType dt, int64_t M, int64_t K, int64_t ldx, Isa vector) {
  std::vector<double> worst(M, 0.0);
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    std::vector<float> r(K);
    for (int64_t m = m0; m < m1; ++m) {
      float amax = 0.0f;
      bool nan = false;
      load_row(xv, dt, m * ldx, K, r.data(), amax, nan, vector);
      if (nan || amax < kTinyAmax || !std::isfinite(amax)) continue;
      double ss = 0.0;
#pragma omp simd reduction(+ : ss)
      for (int64_t k = 0; k < K; ++k) ss += double(r[k]) * double(r[k]);
      worst[m] = double(amax) / std::sqrt(ss / double(K));
    }
  });
  double out = 0.0;
  for (double w : worst) out = w > out ? w : out;
  return out;
}

// x: [M, K] float32 / bf16 / fp16 rows (row stride ldx elements). mode_int8: one limb, reference rounding.
// range_limit > 0 (16-bit mode): one more limb for every token when some token's amax / rms exceeds it
// (see the file header, ACCURACY).
void prepare(const void* xv, at::ScalarType dt, int64_t M, int64_t K, int64_t ldx, int limbs, bool mode_int8,
             Isa vector, int offset, bool tiled, Prepared& p, double range_limit = 0.0) {
  if (!mode_int8 && range_limit > 0.0 && max_dynamic_range(xv, dt, M, K, ldx, vector) > range_limit) limbs += 1;
  p.limbs = limbs;
  p.rows = M * limbs;
  p.offset = offset;
  p.tiled = tiled;
  p.kc = (K + kChunkWeights - 1) / kChunkWeights;
  const int64_t stride = p.kc * kChunkWeights;
  const int64_t alloc_rows = tiled ? (p.rows + 31) / 32 * 32 : p.rows + (offset ? 1 : 0);
  p.u.assign(alloc_rows * stride, uint8_t(offset));
  p.s.assign(p.rows, 1.0f);
  p.t.assign(p.rows, 0);
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    std::vector<float> r(K);
    for (int64_t m = m0; m < m1; ++m) {
      float amax = 0.0f;
      bool nan = false;
      load_row(xv, dt, m * ldx, K, r.data(), amax, nan, vector);
      if (nan) amax = std::numeric_limits<float>::quiet_NaN();
      float s = amax / 127.0f;
      if (amax < kTinyAmax) s = 1.0f;  // (false for NaN, as in the reference)
      if (vector == Isa::avx512) quantize_row_avx512(r.data(), K, limbs, mode_int8, s, offset, p, m * limbs,
                                                   p.s.data() + m * limbs, p.t.data() + m * limbs);
      else if (vector == Isa::avx2) quantize_row_avx2(r.data(), K, limbs, mode_int8, s, offset, p, m * limbs,
                                                      p.s.data() + m * limbs, p.t.data() + m * limbs);
      else quantize_row_scalar(r.data(), K, limbs, mode_int8, s, offset, p, m * limbs, p.s.data() + m * limbs,
                               p.t.data() + m * limbs);
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Integer tile kernels. For a tile (rows m0..m0+mr of the prepared activations, weight rows n0..n0+nr):
//   grouped == false: C[mm][r] = sum_k c[n0+r][k] * v[m0+mm][k]                        (int32, exact)
//   grouped == true : F[mm][r] = sum_words gscale[r][word] * sum_{k in word} q * u     (float)

struct TileArgs {
  const uint8_t* w;      // packed row n0
  int64_t ldw;           // bytes per packed row (Kp / 4)
  int64_t words;         // words per row (Kp / 16)
  int nr;                // rows in this tile (<= NR)
  const uint8_t* u;      // prepared row m0
  int64_t ldu;           // bytes per prepared row
  int mr;                // prepared rows in this tile
  int64_t kc;            // chunks
  const float* gscale;   // grouped: [nr][kc*16] per-word scale of each row; else null
  int32_t* C;            // [MR][NR] (row stride NR)
  float* F;              // [MR][NR]
  bool prefetch;         // prefetch the next tile's weight rows (the last activation tile of these rows)
};

inline int8_t code_q(const uint8_t* row, int64_t k) {  // weight q of column k of a packed row
  uint32_t word;
  std::memcpy(&word, row + (k / 16) * 4, 4);
  int j = int(k % 16), slot = 8 * (j % 2) + j / 2;
  return int8_t(int((word >> (2 * slot)) & 3) - 1);
}

void tile_scalar(const TileArgs& a) {
  for (int r = 0; r < a.nr; ++r) {
    const uint8_t* wrow = a.w + r * a.ldw;
    for (int mm = 0; mm < a.mr; ++mm) {
      const uint8_t* urow = a.u + mm * a.ldu;
      int64_t acc = 0;
      double facc = 0.0;
      for (int64_t c = 0; c < a.kc; ++c) {
        for (int lane = 0; lane < 16; ++lane) {
          int64_t word = c * 16 + lane;
          if (word >= a.words) break;
          int32_t lane_sum = 0;
          for (int jj = 0; jj < 16; ++jj) {
            int64_t kk = word * 16 + jj;
            const uint8_t act = urow[c * kChunkWeights + kPerm.off[kk % kChunkWeights]];
            lane_sum += a.gscale ? code_q(wrow, kk) * int(act) : (code_q(wrow, kk) + 1) * int(int8_t(act));
          }
          if (a.gscale) facc += double(float(lane_sum) * a.gscale[r * a.kc * 16 + word]);
          else acc += lane_sum;
        }
      }
      if (a.gscale) a.F[mm * NR + r] = float(facc);
      else a.C[mm * NR + r] = int32_t(acc);
    }
  }
}

#pragma GCC push_options
#pragma GCC target("avx2,fma")

inline __m256i load_words_avx2(const uint8_t* p, int64_t valid) {  // up to 8 words, zero past `valid`
  if (valid >= 8) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  alignas(32) uint32_t tmp[8] = {0};
  if (valid > 0) std::memcpy(tmp, p, size_t(valid) * 4);
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp));
}

// Per-group scales: each half-chunk's int32 sums (vpmaddubsw(u, q) + vpmaddwd by ones, q = c - 1 in {-1, 0, 1})
// are scaled by their words' group scales into float accumulators.
template <int MR>
void tile_avx2_grouped_t(const TileArgs& a) {
  const __m256i m3 = _mm256_set1_epi8(3), one8 = _mm256_set1_epi8(1), one16 = _mm256_set1_epi16(1);
  __m256 facc[MR][NR];
  for (int mm = 0; mm < MR; ++mm)
    for (int r = 0; r < NR; ++r) facc[mm][r] = _mm256_setzero_ps();
  for (int64_t c = 0; c < a.kc; ++c) {
    for (int h = 0; h < 2; ++h) {  // the two halves (words 0-7, 8-15) of the chunk
      const int64_t w0 = c * 16 + h * 8;
      const int64_t valid = a.words - w0;
      if (valid <= 0) break;
      __m256i raw[NR];
      __m256i valid_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(valid > 8 ? 8 : valid)),
                                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      for (int r = 0; r < NR; ++r)
        raw[r] = r < a.nr ? load_words_avx2(a.w + r * a.ldw + w0 * 4, valid) : _mm256_setzero_si256();
      __m256i part[MR][NR];
      for (int mm = 0; mm < MR; ++mm)
        for (int r = 0; r < NR; ++r) part[mm][r] = _mm256_setzero_si256();
      for (int i = 0; i < 4; ++i) {
        __m256i wq[NR];
        for (int r = 0; r < NR; ++r) {
          __m256i cd = _mm256_and_si256(_mm256_srli_epi32(raw[r], 2 * i), m3);  // codes c, zero past the row
          wq[r] = _mm256_and_si256(_mm256_sub_epi8(cd, one8), valid_mask);     // q = c - 1
        }
        for (int mm = 0; mm < MR; ++mm) {
          __m256i u = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(a.u + mm * a.ldu + c * kChunkWeights + i * 64 + h * 32));
          for (int r = 0; r < NR; ++r)
            part[mm][r] = _mm256_add_epi32(part[mm][r], _mm256_madd_epi16(_mm256_maddubs_epi16(u, wq[r]), one16));
        }
      }
      for (int mm = 0; mm < MR; ++mm)
        for (int r = 0; r < NR; ++r) {
          __m256 gs = _mm256_loadu_ps(a.gscale + r * a.kc * 16 + w0);
          facc[mm][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(part[mm][r]), gs, facc[mm][r]);
        }
    }
  }
  for (int mm = 0; mm < a.mr; ++mm)
    for (int r = 0; r < a.nr; ++r) {
      alignas(32) float t[8];
      _mm256_store_ps(t, facc[mm][r]);
      float s = 0.f;
      for (float v : t) s += v;
      a.F[mm * NR + r] = s;
    }
}

// Per-channel / per-tensor scales (no per-word scaling): RB weight rows x MR prepared rows of a tile, with int16
// accumulators. AVX2 has 16 ymm registers, so the tile's 4 weight rows go in passes of RB = 2 (MR x RB = 8
// accumulators, 2 decoded code vectors, the activation vector and the mask: 12). vpmaddubsw(c, v) gives
// pair sums |c0 v0 + c1 v1| <= 2 * 2 * 128 = 512 (codes c in {0, 1, 2}, v int8), so 32 of them (kFlushChunks = 4
// chunks: 2 halves x 4 shifts each) stay below 16384 in int16; then vpmaddwd by ones widens them into the int32
// sums (kept in memory: touched once every 4 chunks). One multiply a 32 products instead of two.
constexpr int64_t kFlushChunks = 4;

// one half-chunk (8 words = 128 weights of each of RB rows: raw) against MR prepared rows (up: the half's bytes of
// shift 0 of prepared row 0): acc[mm][r] += vpmaddubsw(codes of shift i, activations of shift i), i = 0..3
template <int MR, int RB>
inline void half_chunk_avx2(const __m256i (&raw)[RB], const uint8_t* up, int64_t ldu, __m256i (&acc)[MR][RB]) {
  const __m256i m3 = _mm256_set1_epi8(3);
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    __m256i wq[RB];
    for (int r = 0; r < RB; ++r) wq[r] = _mm256_and_si256(_mm256_srli_epi32(raw[r], 2 * i), m3);  // codes c
    for (int mm = 0; mm < MR; ++mm) {
      const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(up + mm * ldu + i * 64));
      for (int r = 0; r < RB; ++r) {
        acc[mm][r] = _mm256_add_epi16(acc[mm][r], _mm256_maddubs_epi16(wq[r], u));
        // keep each accumulator in its register: unpinned, GCC reassociates these integer sums into trees of
        // partial products that spill (tile_avx2_channel_t<2>: 84 ymm stack moves unpinned, 20 pinned; the hot
        // 3072 x 3072 bf16 GEMV 0.142 -> 0.119 ms on 2 Zen 3 cores)
        __asm__("" : "+x"(acc[mm][r]));
      }
    }
  }
}

template <int MR, int RB>
void rows_avx2_t(const TileArgs& a, int r0, __m256i (&acc32)[4][NR]) {
  const uint8_t* wrow[RB];
  for (int r = 0; r < RB; ++r) wrow[r] = a.w + (r0 + r < a.nr ? r0 + r : 0) * a.ldw;
  const char* next = reinterpret_cast<const char*>(a.w + NR * a.ldw);  // the next tile's rows (memory order)
  const int64_t next_lines = (NR * a.ldw + 63) / 64;
  const bool prefetch = a.prefetch && r0 == 0;
  const int64_t full = a.words / 16;  // chunks whose 16 words are all in the row: no tail masking
  const __m256i one16 = _mm256_set1_epi16(1);
  for (int64_t c0 = 0; c0 < a.kc; c0 += kFlushChunks) {
    __m256i acc[MR][RB];
    for (int mm = 0; mm < MR; ++mm)
      for (int r = 0; r < RB; ++r) acc[mm][r] = _mm256_setzero_si256();
#pragma GCC unroll 1
    for (int64_t c = c0; c < std::min(a.kc, c0 + kFlushChunks); ++c) {
      if (prefetch)  // weights stream from DRAM once: fetch the next tile's (L1) and the one after (L2) meanwhile
        for (int64_t line = c * next_lines / a.kc; line < (c + 1) * next_lines / a.kc; ++line) {
          _mm_prefetch(next + line * 64, _MM_HINT_T0);
          _mm_prefetch(next + NR * a.ldw + line * 64, _MM_HINT_T1);
        }
      const uint8_t* up = a.u + c * kChunkWeights;
#pragma GCC unroll 1
      for (int h = 0; h < 2; ++h) {  // the two halves (words 0-7, 8-15) of the chunk
        const int64_t w0 = c * 16 + h * 8;
        __m256i raw[RB];
        if (c < full) {
          for (int r = 0; r < RB; ++r) raw[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wrow[r] + w0 * 4));
        } else {
          const int64_t valid = a.words - w0;
          if (valid <= 0) break;
          for (int r = 0; r < RB; ++r) raw[r] = load_words_avx2(wrow[r] + w0 * 4, valid);  // zero past the row
        }
        half_chunk_avx2<MR, RB>(raw, up + h * 32, a.ldu, acc);
      }
    }
    for (int mm = 0; mm < MR; ++mm)
      for (int r = 0; r < RB; ++r)
        acc32[mm][r0 + r] = _mm256_add_epi32(acc32[mm][r0 + r], _mm256_madd_epi16(acc[mm][r], one16));
  }
}

template <int MR>
void tile_avx2_channel_t(const TileArgs& a) {
  __m256i acc32[4][NR];
  for (int mm = 0; mm < 4; ++mm)
    for (int r = 0; r < NR; ++r) acc32[mm][r] = _mm256_setzero_si256();
  for (int r0 = 0; r0 < a.nr; r0 += 2) rows_avx2_t<MR, 2>(a, r0, acc32);
  for (int mm = 0; mm < a.mr; ++mm)
    for (int r = 0; r < a.nr; ++r) {
      alignas(32) int32_t t[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(t), acc32[mm][r]);
      int32_t s = 0;
      for (int32_t v : t) s += v;
      a.C[mm * NR + r] = s;
    }
}

void tile_avx2(const TileArgs& a) {
  if (!a.gscale) {
    switch (a.mr) {
      case 1: return tile_avx2_channel_t<1>(a);
      case 2: return tile_avx2_channel_t<2>(a);
      case 3: return tile_avx2_channel_t<3>(a);
      default: return tile_avx2_channel_t<4>(a);
    }
  }
  switch (a.mr) {
    case 1: return tile_avx2_grouped_t<1>(a);
    case 2: return tile_avx2_grouped_t<2>(a);
    case 3: return tile_avx2_grouped_t<3>(a);
    default: return tile_avx2_grouped_t<4>(a);
  }
}

#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq")

template <int MR, bool GROUPED>
void tile_avx512_t(const TileArgs& a) {
  const __m512i m3 = _mm512_set1_epi8(3), one8 = _mm512_set1_epi8(1);
  __m512i acc[MR][NR];
  __m512 facc[GROUPED ? MR : 1][GROUPED ? NR : 1];
  for (int mm = 0; mm < MR; ++mm)
    for (int r = 0; r < NR; ++r) acc[mm][r] = _mm512_setzero_si512();
  if constexpr (GROUPED)
    for (int mm = 0; mm < MR; ++mm)
      for (int r = 0; r < NR; ++r) facc[mm][r] = _mm512_setzero_ps();
  const uint8_t* wrow[NR];
  for (int r = 0; r < NR; ++r) wrow[r] = a.w + (r < a.nr ? r : 0) * a.ldw;
  const char* next = reinterpret_cast<const char*>(a.w + NR * a.ldw);  // the next tile's rows (memory order)
  const int64_t next_lines = (NR * a.ldw + 63) / 64;
  for (int64_t c = 0; c < a.kc; ++c) {
    if (a.prefetch)  // weights stream from DRAM once: fetch the next tile's (L1) and the one after (L2) meanwhile
      for (int64_t line = c * next_lines / a.kc; line < (c + 1) * next_lines / a.kc; ++line) {
        _mm_prefetch(next + line * 64, _MM_HINT_T0);
        _mm_prefetch(next + NR * a.ldw + line * 64, _MM_HINT_T1);
      }
    const int64_t valid = a.words - c * 16;
    const __mmask16 lanes = valid >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << valid) - 1);
    const __mmask64 bytes = valid >= 16 ? ~__mmask64(0) : ((__mmask64(1) << (4 * valid)) - 1);
    __m512i raw[NR];  // the chunk of each row, loaded once for its four shifts
    for (int r = 0; r < NR; ++r) raw[r] = _mm512_maskz_loadu_epi32(lanes, wrow[r] + c * kChunkBytes);
    for (int i = 0; i < 4; ++i) {
      __m512i wq[NR];
      for (int r = 0; r < NR; ++r) {
        __m512i cd = _mm512_and_si512(_mm512_srli_epi32(raw[r], 2 * i), m3);  // codes c; zero past the row
        if constexpr (GROUPED) wq[r] = _mm512_maskz_sub_epi8(bytes, cd, one8);  // q in {-1, 0, 1}
        else wq[r] = cd;
      }
      const uint8_t* up = a.u + c * kChunkWeights + i * 64;
      for (int mm = 0; mm < MR; ++mm) {
        __m512i u = _mm512_loadu_si512(up + mm * a.ldu);
        for (int r = 0; r < NR; ++r)
          acc[mm][r] = GROUPED ? _mm512_dpbusd_epi32(acc[mm][r], u, wq[r]) : _mm512_dpbusd_epi32(acc[mm][r], wq[r], u);
      }
    }
    if constexpr (GROUPED) {
      for (int r = 0; r < NR; ++r) {
        __m512 gs = _mm512_loadu_ps(a.gscale + r * a.kc * 16 + c * 16);
        for (int mm = 0; mm < MR; ++mm) {
          facc[mm][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[mm][r]), gs, facc[mm][r]);
          acc[mm][r] = _mm512_setzero_si512();
        }
      }
    }
  }
  for (int mm = 0; mm < a.mr; ++mm)
    for (int r = 0; r < a.nr; ++r) {
      if constexpr (GROUPED) a.F[mm * NR + r] = _mm512_reduce_add_ps(facc[mm][r]);
      else a.C[mm * NR + r] = _mm512_reduce_add_epi32(acc[mm][r]);
    }
}

void tile_avx512(const TileArgs& a) {
  if (a.gscale) {
    switch (a.mr) {
      case 1: return tile_avx512_t<1, true>(a);
      case 2: return tile_avx512_t<2, true>(a);
      default: return tile_avx512_t<3, true>(a);
    }
  }
  switch (a.mr) {
    case 1: return tile_avx512_t<1, false>(a);
    case 2: return tile_avx512_t<2, false>(a);
    case 3: return tile_avx512_t<3, false>(a);
    case 4: return tile_avx512_t<4, false>(a);
    case 5: return tile_avx512_t<5, false>(a);
    default: return tile_avx512_t<6, false>(a);
  }
}

#pragma GCC pop_options

int max_mr(Isa isa, bool grouped) {
  if (isa == Isa::avx512) return grouped ? 3 : 4;
  if (isa == Isa::avx2) return 4;
  return 4;
}

void run_tile(Isa isa, const TileArgs& a) {
  if (isa == Isa::avx512) tile_avx512(a);
  else if (isa == Isa::avx2) tile_avx2(a);
  else tile_scalar(a);
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even, NaN -> 0x7FC0: as c10::BFloat16
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return 0x7FC0;
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace


// The epilogue of one output row m over columns [n0, n0 + nb) of a block. acc: the block's int32 results
// (or float, grouped) of the m's limbs, kept at NB columns a prepared row; corr: the constant row's.
// y = dtype((sum_l s_l * (acc_l - corr)) * w + bias) in 16-bit mode; dtype(((acc - corr) * s) * w + bias)
// in int8 mode. Every ISA evaluates exactly these float operations in this order.
struct Epilogue {
  const int32_t* C;     // [rows + 1][NB]
  const float* F;       // [rows + 1][NB]
  bool grouped, mode_int8;
  int64_t limbs, rows;
  const float* s;       // [rows]
  const int32_t* t;     // [rows] sum_k v of each prepared row
  const float* S;       // weight scale [S_n, S_k] (unused when grouped: folded into F)
  int64_t S_n, S_k;
  const void* B;        // bias or null
  at::ScalarType dt;
  void* Y;
  int64_t N;
  const int32_t* colcorr = nullptr;  // AMX: per block column, 128 * the weight row sum (else t is used)
  int64_t ldc = NB;     // row stride of C
  int64_t c_row0 = 0;   // AMX token chunks: C holds prepared rows [c_row0, c_row0 + chunk) (s, t stay global)
};

inline float epi_value(const Epilogue& e, int64_t m, int64_t n, int64_t col) {
  const float w = e.grouped ? 1.0f : e.S[(e.S_n == 1 ? 0 : col) * e.S_k];
  float out;
  if (e.mode_int8) {
    out = (float(e.C[(m - e.c_row0) * e.ldc + n] - (e.colcorr ? e.colcorr[n] : e.t[m])) * e.s[m]) * w;
  } else {
    float acc = 0.0f;
    for (int64_t l = 0; l < e.limbs; ++l) {
      const int64_t row = m * e.limbs + l;
      const float v = e.grouped ? e.F[row * NB + n] - e.F[e.rows * NB + n]
                                : float(e.C[(row - e.c_row0) * e.ldc + n] - (e.colcorr ? e.colcorr[n] : e.t[row]));
      acc = acc + e.s[row] * v;
    }
    out = acc * w;
  }
  if (e.B) {
    if (e.dt == at::kFloat) out = out + static_cast<const float*>(e.B)[col];
    else out = out + half_to_float(static_cast<const uint16_t*>(e.B)[col], e.dt == at::kBFloat16);
  }
  return out;
}

inline void epi_store(const Epilogue& e, int64_t m, int64_t col, float out) {
  if (e.dt == at::kFloat) static_cast<float*>(e.Y)[m * e.N + col] = out;
  else if (e.dt == at::kBFloat16) static_cast<uint16_t*>(e.Y)[m * e.N + col] = float_to_bf16(out);
  else static_cast<at::Half*>(e.Y)[m * e.N + col] = at::Half(out);
}

void epilogue_scalar(const Epilogue& e, int64_t m, int64_t n0, int64_t nb) {
  for (int64_t n = 0; n < nb; ++n) epi_store(e, m, n0 + n, epi_value(e, m, n, n0 + n));
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
void epilogue_avx512(const Epilogue& e, int64_t m, int64_t n0, int64_t nb) {
  int64_t n = 0;
  for (; n + 16 <= nb; n += 16) {
    const int64_t col = n0 + n;
    __m512 w = e.grouped ? _mm512_set1_ps(1.0f)
                         : (e.S_n == 1 ? _mm512_set1_ps(e.S[0]) : e.S_k == 1 ? _mm512_loadu_ps(e.S + col) : _mm512_i32gather_ps(
                               _mm512_mullo_epi32(_mm512_add_epi32(_mm512_set1_epi32(int(col)),
                                                                   _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)),
                                                  _mm512_set1_epi32(int(e.S_k))), e.S, 4));
    __m512 out;
    if (e.mode_int8) {
      __m512i acc = _mm512_sub_epi32(_mm512_loadu_si512(e.C + (m - e.c_row0) * e.ldc + n),
                                     e.colcorr ? _mm512_loadu_si512(e.colcorr + n) : _mm512_set1_epi32(e.t[m]));
      out = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(e.s[m])), w);
    } else {
      __m512 acc = _mm512_setzero_ps();
      for (int64_t l = 0; l < e.limbs; ++l) {
        const int64_t row = m * e.limbs + l;
        __m512 v = e.grouped ? _mm512_sub_ps(_mm512_loadu_ps(e.F + row * NB + n), _mm512_loadu_ps(e.F + e.rows * NB + n))
                             : _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_loadu_si512(e.C + (row - e.c_row0) * e.ldc + n),
                                                                   e.colcorr ? _mm512_loadu_si512(e.colcorr + n)
                                                                             : _mm512_set1_epi32(e.t[row])));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_set1_ps(e.s[row]), v));
      }
      out = _mm512_mul_ps(acc, w);
    }
    if (e.B) {
      __m512 b;
      if (e.dt == at::kFloat) b = _mm512_loadu_ps(static_cast<const float*>(e.B) + col);
      else if (e.dt == at::kBFloat16)
        b = torch_ternary_amx::bf16_to_f32(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(e.B) + col)));
      else b = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(e.B) + col)));
      out = _mm512_add_ps(out, b);
    }
    if (e.dt == at::kFloat) {
      _mm512_storeu_ps(static_cast<float*>(e.Y) + m * e.N + col, out);
    } else if (e.dt == at::kBFloat16) {  // round to nearest even, NaN -> 0x7FC0 (as c10::BFloat16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(e.Y) + m * e.N + col),
                          torch_ternary_amx::bf16_rne(out));
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(e.Y) + m * e.N + col),
                          _mm512_cvtps_ph(out, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
  }
  for (; n < nb; ++n) epi_store(e, m, n0 + n, epi_value(e, m, n, n0 + n));
}
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// epilogue_avx512's AVX2 twin: the same float operations in the same order, 8 columns a step
void epilogue_avx2(const Epilogue& e, int64_t m, int64_t n0, int64_t nb) {
  const int64_t vec_end = nb / 8 * 8;  // whole steps of 8 columns; the rest takes the scalar code
  for (int64_t n = 0, col = n0; n < vec_end; n += 8, col += 8) {
    const __m256 w = e.grouped ? _mm256_set1_ps(1.0f) : (e.S_n == 1 ? _mm256_set1_ps(e.S[0]) : _mm256_loadu_ps(e.S + col));
    __m256 out;
    if (e.mode_int8) {
      const __m256i acc = _mm256_sub_epi32(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e.C + (m - e.c_row0) * e.ldc + n)),
          e.colcorr ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e.colcorr + n)) : _mm256_set1_epi32(e.t[m]));
      out = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(e.s[m])), w);
    } else {
      __m256 acc = _mm256_setzero_ps();
      for (int64_t l = 0; l < e.limbs; ++l) {
        const int64_t row = m * e.limbs + l;
        const __m256 v =
            e.grouped ? _mm256_sub_ps(_mm256_loadu_ps(e.F + row * NB + n), _mm256_loadu_ps(e.F + e.rows * NB + n))
                      : _mm256_cvtepi32_ps(_mm256_sub_epi32(
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e.C + (row - e.c_row0) * e.ldc + n)),
                            e.colcorr ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e.colcorr + n))
                                      : _mm256_set1_epi32(e.t[row])));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(e.s[row]), v));
      }
      out = _mm256_mul_ps(acc, w);
    }
    if (e.B) {
      __m256 b;
      const uint16_t* bh = static_cast<const uint16_t*>(e.B) + col;
      if (e.dt == at::kFloat) b = _mm256_loadu_ps(static_cast<const float*>(e.B) + col);
      else if (e.dt == at::kBFloat16)
        b = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bh))), 16));
      else b = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bh)));
      out = _mm256_add_ps(out, b);
    }
    uint16_t* yh = static_cast<uint16_t*>(e.Y) + m * e.N + col;
    if (e.dt == at::kFloat) {
      _mm256_storeu_ps(static_cast<float*>(e.Y) + m * e.N + col, out);
    } else if (e.dt == at::kBFloat16) {  // round to nearest even, NaN -> 0x7FC0 (as c10::BFloat16)
      const __m256i u = _mm256_castps_si256(out);
      const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
      __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
      r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(out, out, _CMP_UNORD_Q)));
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);  // 8 uint16 in the low half
      _mm_storeu_si128(reinterpret_cast<__m128i*>(yh), _mm256_castsi256_si128(packed));
    } else {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(yh), _mm256_cvtps_ph(out, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
  }
  for (int64_t n = vec_end; n < nb; ++n) epi_store(e, m, n0 + n, epi_value(e, m, n, n0 + n));
}
#pragma GCC pop_options


// ---------------------------------------------------------------------------------------------------
// AMX (Intel AMX-INT8: tdpbusd on 16 x 64-byte tiles), for many activation rows and per-channel /
// per-tensor scales. C = u x q^T: the A tile is 16 prepared activation rows (u = v + 128, unsigned) of one
// (chunk, shift) step, loaded straight from the prepared layout; the B tile is the same step's weights
// q = c - 1 of 16 output rows in AMX's pairing layout ([word][16 rows][4 bytes]), decoded in registers and
// transposed (16 x 16 dwords) into a small scratch block per NBA = 256 weight rows and KBS = 16 steps (1024
// weights; 256 KB): the scratch is transient, the resident weight stays 2-bit. The u8 offset is corrected per
// output column with the weight row sums (sum q u = sum q v + 128 sum q). Tiles: C 2 x 2 (32 activation rows x
// 32 weight rows, int32, accumulated across K blocks in the block's C buffer), A 2, B 2. Tokens go in chunks of
// about `chunk_rows` prepared rows (the Python side's AMX_CHUNK_ROWS, rounded down to whole tokens and a multiple
// of 32 rows; 512: 512 int8 tokens, 256 of two limbs, 160 of three): the chunk's C block (512 rows x 256 x 4 B =
// 512 KB) stays in L2 while the K blocks accumulate into it, and each chunk decodes the block's weights again
// (unchunked, 4096 int8 tokens made C 2 MB: 1.25x-1.3x the time of four 1024-token calls on the long-K shapes).
// amx_kblock sweeps the weight block's 8 row-tile pairs over one activation block of MBA = 128 rows (its K block,
// 128 KB, stays in L2), and while it does, each pair prefetches (prefetcht1) two lines of every tile of the next
// activation block: without it the first pair over a block waited on L3 (measured on a Xeon whose tdpbusd takes
// ~4.3 ns, where these loads, not the products, bound the kernel: 128 -> 256 weight rows, 2048 -> 1024 weights a K
// block, the prefetch and 1024 -> 512 chunk rows took linear_a8 at M = 1024 from 1.37x-1.54x to 1.52x-1.76x
// torch bf16 on five FLUX shapes: benchmarks/cpu_kernels_ab.py).

using torch_ternary_amx::amx_configure;
using torch_ternary_amx::amx_release;
using torch_ternary_amx::amx_usable;
using torch_ternary_amx::transpose16x16;

constexpr int64_t NBA = 256;     // weight rows of an AMX thread block (16 tiles of 16)
constexpr int64_t KBS = 16;      // (chunk, shift) steps of an AMX K block: 4 chunks, 1024 weights (B scratch 256 KB)

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")

// weight rows [n0, n0 + 128) (zero past N), steps [s0, s0 + ns) -> B scratch [8 n-tiles][ns][16 words][16 rows][4 B];
// rsum[rr] += sum of q over these steps (the u8-offset correction)
void decode_for_amx(const uint8_t* W, int64_t ldw, int64_t words, int64_t n0, int64_t N, int64_t s0, int64_t ns,
                    uint8_t* B, int32_t* rsum) {
  const __m512i m3 = _mm512_set1_epi8(3), one8 = _mm512_set1_epi8(1);
  for (int64_t nt = 0; nt < NBA / 16; ++nt) {
    __m512i sums[16];
    for (int rr = 0; rr < 16; ++rr) sums[rr] = _mm512_setzero_si512();
    for (int64_t c = s0 / 4; c < (s0 + ns) / 4; ++c) {
      __m512i raw[16];
      __mmask64 bytes[16];
      for (int rr = 0; rr < 16; ++rr) {
        const int64_t n = n0 + nt * 16 + rr;
        const int64_t valid = n < N ? words - c * 16 : 0;
        const __mmask16 lanes = valid >= 16 ? __mmask16(0xFFFF) : (valid > 0 ? __mmask16((1u << valid) - 1) : __mmask16(0));
        raw[rr] = _mm512_maskz_loadu_epi32(lanes, W + (valid > 0 ? n * ldw + c * kChunkBytes : 0));
        bytes[rr] = valid >= 16 ? ~__mmask64(0) : (valid > 0 ? (__mmask64(1) << (4 * valid)) - 1 : __mmask64(0));
      }
      for (int i = 0; i < 4; ++i) {
        __m512i d[16];
        for (int rr = 0; rr < 16; ++rr) {  // q = c - 1; zero where the row has no weight (masked words, rows past N)
          const __m512i cd = _mm512_and_si512(_mm512_srli_epi32(raw[rr], 2 * i), m3);
          d[rr] = _mm512_maskz_sub_epi8(bytes[rr], cd, one8);
          sums[rr] = _mm512_dpbusd_epi32(sums[rr], one8, d[rr]);
        }
        transpose16x16(d);
        uint8_t* dst = B + (nt * ns + (c * 4 + i - s0)) * 1024;
        for (int l = 0; l < 16; ++l) _mm512_store_si512(dst + l * 64, d[l]);
      }
    }
    for (int rr = 0; rr < 16; ++rr) rsum[nt * 16 + rr] += _mm512_reduce_add_epi32(sums[rr]);
  }
}

// C [rows][ldc] int32 (block columns 0..NBA-1) += A (prepared rows, this K block) x B (this K block)
void amx_kblock(const uint8_t* U, int64_t steps, int64_t rows, const uint8_t* B, int64_t s0, int64_t ns, int32_t* C,
                int64_t ldc, bool first) {
  const int64_t stride_c = ldc * 4;
  constexpr int64_t MBA = 128;  // activation rows whose K block (256 KB) stays in L2 across the weight tiles
  for (int64_t mb = 0; mb < rows; mb += MBA)
  for (int nt = 0; nt < NBA / 16; nt += 2) {
    for (int64_t m0 = mb; m0 < std::min(rows, mb + MBA); m0 += 32) {
      int32_t* c00 = C + m0 * ldc + nt * 16;
      int32_t* c01 = c00 + 16;
      int32_t* c10 = c00 + 16 * ldc;
      int32_t* c11 = c10 + 16;
      if (first) { _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3); }
      else { _tile_loadd(0, c00, stride_c); _tile_loadd(1, c01, stride_c); _tile_loadd(2, c10, stride_c); _tile_loadd(3, c11, stride_c); }
      const uint8_t* b0 = B + nt * ns * 1024;
      const uint8_t* b1 = b0 + ns * 1024;
      const uint8_t* a0 = U + ((m0 / 16) * steps + s0) * 1024;  // tiled layout: one step of 16 rows, 1 KB
      const uint8_t* a1 = a0 + steps * 1024;
      // the next activation block's tiles of this K block, two lines of each per row-tile pair (prefetcht1: L2)
      const bool pf = m0 + MBA < rows;
      const uint8_t* pa = a0 + (MBA / 16) * steps * 1024 + nt * 64;
      for (int64_t s = 0; s < ns; ++s) {
        if (pf) {
          _mm_prefetch(reinterpret_cast<const char*>(pa + s * 1024), _MM_HINT_T1);
          _mm_prefetch(reinterpret_cast<const char*>(pa + s * 1024 + 64), _MM_HINT_T1);
          _mm_prefetch(reinterpret_cast<const char*>(pa + (steps + s) * 1024), _MM_HINT_T1);
          _mm_prefetch(reinterpret_cast<const char*>(pa + (steps + s) * 1024 + 64), _MM_HINT_T1);
        }
        _tile_loadd(4, a0 + s * 1024, 64);
        _tile_loadd(5, a1 + s * 1024, 64);
        _tile_loadd(6, b0 + s * 1024, 64);
        _tile_loadd(7, b1 + s * 1024, 64);
        _tile_dpbusd(0, 4, 6);
        _tile_dpbusd(1, 4, 7);
        _tile_dpbusd(2, 5, 6);
        _tile_dpbusd(3, 5, 7);
      }
      _tile_stored(0, c00, stride_c); _tile_stored(1, c01, stride_c);
      _tile_stored(2, c10, stride_c); _tile_stored(3, c11, stride_c);
    }
  }
}

#pragma GCC pop_options

// ---------------------------------------------------------------------------------------------------
// Entry points (called from torch_ternary/kernels/cpu/__init__.py, which checks every argument first).

std::vector<std::string> cpu_isas() {
  std::vector<std::string> out;
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
                      __builtin_cpu_supports("avx512dq");
  if (avx512 && amx_usable()) out.push_back("amx");
  if (avx512) out.push_back("avx512");
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    out.push_back("avx2");
  out.push_back("scalar");
  return out;
}

//: prepared rows of activations a thread block keeps in L2 while it sweeps its weight rows
constexpr int64_t MB = 96;

// y = x @ (scale * q).T (+ bias): x [M, K] float32 / bf16 / fp16 (last dim contiguous), packed uint8
// [N, Kp/4], scale float32 [S_n, S_k], bias x.dtype [N] or None. mode "int8": linear_a8's arithmetic
// (per-channel / per-tensor scales only); mode "16bit": `limbs` int8 limbs a token.
torch::Tensor ternary_linear(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& scale,
                             const c10::optional<torch::Tensor>& bias, int64_t K, int64_t group_size,
                             const std::string& isa_name, int64_t limbs, bool mode_int8, double range_limit,
                             int64_t chunk_rows_max) {
  Isa isa = isa_name == "amx" ? Isa::amx : isa_name == "avx512" ? Isa::avx512 : (isa_name == "avx2" ? Isa::avx2 : Isa::scalar);
  const int64_t M = x.size(0), N = packed.size(0);
  const int64_t ldw = packed.size(1), words = ldw / 4;
  const int64_t S_n = scale.size(0), S_k = scale.size(1);
  const bool grouped = S_k > 1;
  if (isa == Isa::amx && (grouped || !amx_usable())) isa = Isa::avx512;  // AMX: per-channel / per-tensor only
  auto y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  Prepared p;
  const Isa vec = isa == Isa::amx ? Isa::avx512 : isa;  // the prepare and epilogue variant
  prepare(x.data_ptr(), x.scalar_type(), M, K, x.stride(0), int(limbs), mode_int8, vec,
          (grouped || isa == Isa::amx) ? 128 : 0, isa == Isa::amx, p, range_limit);
  limbs = p.limbs;
  const int64_t rows_pad = (p.rows + 31) / 32 * 32;  // AMX reads activation rows 32 at a time
  const int64_t ldu = p.kc * kChunkWeights;
  const uint8_t* W = packed.data_ptr<uint8_t>();
  const float* S = scale.data_ptr<float>();
  const int64_t rows = p.rows + (grouped ? 1 : 0);  // (per-group scales: the constant row last)
  const int mrmax = max_mr(isa == Isa::amx ? Isa::avx512 : isa, grouped);
  const int64_t nblocks = (N + NB - 1) / NB;
  const Epilogue e{nullptr, nullptr, grouped, mode_int8, limbs, p.rows, p.s.data(), p.t.data(), S, S_n, S_k,
             bias.has_value() ? bias->data_ptr() : nullptr, x.scalar_type(), y.data_ptr(), N};
  if (isa == Isa::amx) {
    const int64_t steps = p.kc * 4;
    // tokens in chunks whose prepared rows (a multiple of 32) keep the block's int32 C in L2 across K blocks
    const int64_t chunk_tokens = std::max<int64_t>(32, chunk_rows_max / limbs / 32 * 32);
    const int64_t chunk_rows = std::min(rows_pad, chunk_tokens * limbs);
    at::parallel_for(0, (N + NBA - 1) / NBA, 1, [&](int64_t b0, int64_t b1) {
      amx_configure();
      Aligned<int32_t> C;
      C.assign(chunk_rows * NBA, 0);
      std::vector<int32_t> rsum(NBA), colcorr(NBA);
      std::vector<uint8_t> Bscr(NBA / 16 * KBS * 1024 + 64);
      uint8_t* B = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(Bscr.data()) + 63) & ~uintptr_t(63));
      Epilogue ep = e;
      ep.ldc = NBA;
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t n0 = blk * NBA;
        for (int64_t t0 = 0; t0 < M; t0 += chunk_tokens) {
          const int64_t r0 = t0 * limbs, r1 = std::min(rows_pad, r0 + chunk_rows);
          std::fill(rsum.begin(), rsum.end(), 0);
          for (int64_t s0 = 0; s0 < steps; s0 += KBS) {
            const int64_t ns = std::min(KBS, steps - s0);
            decode_for_amx(W, ldw, words, n0, N, s0, ns, B, rsum.data());
            amx_kblock(p.u.data() + (r0 / 16) * steps * 1024, steps, r1 - r0, B, s0, ns, C.data(), NBA, s0 == 0);
          }
          for (int64_t n = 0; n < NBA; ++n) colcorr[n] = 128 * rsum[n];
          ep.c_row0 = r0;
          for (int64_t sub = 0; sub < NBA && n0 + sub < N; sub += NB) {
            ep.C = C.data() + sub;
            ep.colcorr = colcorr.data() + sub;
            const int64_t nb = std::min(NB, N - n0 - sub);
            for (int64_t m = t0; m < std::min(M, t0 + chunk_tokens); ++m) epilogue_avx512(ep, m, n0 + sub, nb);
          }
        }
      }
      amx_release();
    });
  } else
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<int32_t> C(grouped ? 0 : rows * NB);
    std::vector<float> F(grouped ? rows * NB : 0), gscale;
    if (grouped) gscale.assign(NB * p.kc * 16, 0.0f);
    int32_t ct[6 * NR];
    float ft[6 * NR];
    Epilogue ep = e;
    ep.C = C.data();
    ep.F = F.data();
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t n0 = blk * NB, nb = std::min(NB, N - n0);
      if (grouped)  // the scale of each word's group, per row
        for (int64_t n = 0; n < nb; ++n)
          for (int64_t w = 0; w < words; ++w) gscale[n * p.kc * 16 + w] = S[(n0 + n) * S_k + (w * 16) / group_size];
      for (int64_t mb0 = 0; mb0 < rows; mb0 += MB) {
        const int64_t mb1 = std::min(rows, mb0 + MB);
        for (int64_t r0 = 0; r0 < nb; r0 += NR) {
          const int nr = int(std::min<int64_t>(NR, nb - r0));
          for (int64_t m0 = mb0; m0 < mb1; m0 += mrmax) {
            const int mr = int(std::min<int64_t>(mrmax, mb1 - m0));
            TileArgs a{W + (n0 + r0) * ldw, ldw, words, nr, p.u.data() + m0 * ldu, ldu, mr, p.kc,
                       grouped ? gscale.data() + r0 * p.kc * 16 : nullptr, ct, ft,
                       m0 + mrmax >= mb1 && n0 + r0 + 2 * NR <= N};
            run_tile(isa, a);
            for (int mm = 0; mm < mr; ++mm)
              for (int r = 0; r < nr; ++r) {
                if (grouped) F[(m0 + mm) * NB + r0 + r] = ft[mm * NR + r];
                else C[(m0 + mm) * NB + r0 + r] = ct[mm * NR + r];
              }
          }
        }
      }
      for (int64_t m = 0; m < M; ++m) {
        if (vec == Isa::avx512) epilogue_avx512(ep, m, n0, nb);  // rows are tokens here; limbs are looked up
        else if (vec == Isa::avx2) epilogue_avx2(ep, m, n0, nb);
        else epilogue_scalar(ep, m, n0, nb);
      }
    }
  });
  return y;
}

// out [N, K] (dtype) = scale * q, natural k order: the dense weight (torch_ternary::dequantize, and the
// decode tiles of the backward product); codes_only: out = q as int8 (torch_ternary::unpack).
namespace {
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
void dequant_rows_avx512(const uint8_t* W, int64_t ldw, int64_t K, const float* S, int64_t S_n, int64_t S_k,
                         int64_t G, int64_t n0, int64_t n1, at::ScalarType dt, void* out, bool codes_only) {
  // shift of weight j's slot: 2 * (8 * (j % 2) + j / 2)
  const __m512i shifts = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
  const __m512i three = _mm512_set1_epi32(3), one = _mm512_set1_epi32(1);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = W + n * ldw;
    const float* srow = S + (S_n == 1 ? 0 : n) * S_k;
    for (int64_t k = 0; k < K; k += 16) {
      uint32_t word;
      std::memcpy(&word, row + (k / 16) * 4, 4);
      const __m512i q = _mm512_sub_epi32(_mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(int(word)), shifts), three), one);
      const int64_t take = std::min<int64_t>(16, K - k);
      const __mmask16 mask = take == 16 ? __mmask16(0xFFFF) : __mmask16((1u << take) - 1);
      if (codes_only) {
        _mm_mask_storeu_epi8(static_cast<int8_t*>(out) + n * K + k, mask, _mm512_cvtepi32_epi8(q));
        continue;
      }
      // the scale of each of the 16 weights (a group never splits a word: G is a multiple of 16)
      const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(srow[S_k == 1 ? 0 : k / G]));
      if (dt == at::kFloat) _mm512_mask_storeu_ps(static_cast<float*>(out) + n * K + k, mask, v);
      else if (dt == at::kBFloat16)  // q * s rounded to nearest even, as c10::BFloat16 (no NaN: s is finite)
        _mm256_mask_storeu_epi16(static_cast<uint16_t*>(out) + n * K + k, mask, _mm512_cvtepi32_epi16(_mm512_srli_epi32(
            _mm512_add_epi32(_mm512_add_epi32(_mm512_castps_si512(v), _mm512_set1_epi32(0x7FFF)),
                             _mm512_and_si512(_mm512_srli_epi32(_mm512_castps_si512(v), 16), one)), 16)));
      else
        _mm256_mask_storeu_epi16(static_cast<uint16_t*>(out) + n * K + k, mask,
                                 _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
  }
}
#pragma GCC pop_options

void dequant_rows_scalar(const uint8_t* W, int64_t ldw, int64_t K, const float* S, int64_t S_n, int64_t S_k,
                         int64_t G, int64_t n0, int64_t n1, at::ScalarType dt, void* out, bool codes_only) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* srow = S + (S_n == 1 ? 0 : n) * S_k;
    for (int64_t k = 0; k < K; ++k) {
      const int q = code_q(W + n * ldw, k);
      if (codes_only) { static_cast<int8_t*>(out)[n * K + k] = int8_t(q); continue; }
      const float v = float(q) * srow[S_k == 1 ? 0 : k / G];
      if (dt == at::kFloat) static_cast<float*>(out)[n * K + k] = v;
      else if (dt == at::kBFloat16) static_cast<uint16_t*>(out)[n * K + k] = float_to_bf16(v);
      else static_cast<at::Half*>(out)[n * K + k] = at::Half(v);
    }
  }
}
}  // namespace

torch::Tensor ternary_dequantize(const torch::Tensor& packed, const torch::Tensor& scale, int64_t K, int64_t group_size,
                                 at::ScalarType dtype, int64_t n0, int64_t n1, const std::string& isa_name, bool codes_only) {
  TORCH_CHECK(codes_only || dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "ternary_dequantize: float32, bfloat16 or float16 only");
  auto out = torch::empty({n1 - n0, K}, packed.options().dtype(codes_only ? at::kChar : dtype));
  if (n1 <= n0 || K == 0) return out;
  const bool vec = isa_name == "amx" || isa_name == "avx512";
  const uint8_t* W = packed.data_ptr<uint8_t>() + n0 * packed.size(1);
  torch::Tensor s = scale.size(0) == 1 ? scale : scale.narrow(0, n0, n1 - n0);
  const float* S = s.data_ptr<float>();
  const int64_t S_n = s.size(0), S_k = s.size(1), ldw = packed.size(1);
  at::parallel_for(0, n1 - n0, 16, [&](int64_t a, int64_t b) {
    if (vec) dequant_rows_avx512(W, ldw, K, S, S_n, S_k, group_size, a, b, dtype, out.data_ptr(), codes_only);
    else dequant_rows_scalar(W, ldw, K, S, S_n, S_k, group_size, a, b, dtype, out.data_ptr(), codes_only);
  });
  return out;
}

// ste_cpu.cpp (same extension): the QAT weight and its straight-through gradient
torch::Tensor ste_forward(const torch::Tensor& latent, const torch::Tensor& scale, int64_t G, bool vec);
std::vector<torch::Tensor> ste_backward(const torch::Tensor& grad, const torch::Tensor& latent, const torch::Tensor& scale,
                                        int64_t G, bool vec);

// amx_bf16_cpu.cpp (same extension): the large-M bf16 linear on AMX-BF16
bool amx_bf16_available();
torch::Tensor ternary_linear_bf16_amx(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& scale,
                                     const c10::optional<torch::Tensor>& bias, int64_t K, int64_t chunk);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cpu_isas", &cpu_isas, "the instruction sets this CPU runs, best first");
  m.def("ternary_linear", &ternary_linear, "ternary linear from 2-bit packed weights (see the file header)");
  m.def("ternary_dequantize", &ternary_dequantize, "rows [n0, n1) of scale * q (or q as int8), natural order");
  m.def("amx_bf16_available", &amx_bf16_available, "whether this CPU and process run AMX-BF16 (amx_bf16_cpu.cpp)");
  m.def("ternary_linear_bf16_amx", &ternary_linear_bf16_amx, "bf16 ternary linear on AMX-BF16 (amx_bf16_cpu.cpp)");
  m.def("ste_forward", &ste_forward, "the ternary weight of a float32 QAT latent (ste_cpu.cpp)");
  m.def("ste_backward", &ste_backward, "the straight-through gradients of ste_forward (ste_cpu.cpp)");
}
