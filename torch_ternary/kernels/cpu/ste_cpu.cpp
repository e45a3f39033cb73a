// torch-ternary CPU kernels of the QAT weight (torch_ternary::ste_weight and ste_weight_backward; the formulas
// and the plain-torch reference: torch_ternary/ops/ste_weight.py). Built into the same extension as
// ternary_cpu.cpp (which binds these entry points).
//
// LAYOUT. latent W and grad float32 [N][K] contiguous; scale float32 [S_n][S_k] contiguous (S_n in {1, N},
// S_k = ceil(K / G)); weight k of row n has the scale srow[k / G] (srow[0] when S_k == 1).
//
// FORWARD, one pass: out = clip(round_half_even(W / s), -1, 1) * s. The division is IEEE float32 (as torch.div)
// and the rest exact, so the result is bit-identical with the reference. A NaN latent stays NaN.
// BACKWARD, one pass over W and grad (r = W / s recomputed, nothing saved from the forward):
// grad_latent = grad where |r| <= 1 else 0 (bit-identical); the scale's gradient sum of grad * (q - r * inside)
// accumulates per row and granule in float32 lanes of 16, each 16-lane sum added to a float64 partial
// [N][S_k]; per-tensor scales then sum the rows' partials in row order. Deterministic for any thread count
// (the reference sums in another order: float32 rounding differences only).
//
// THREADS AND ISA. Rows are split over torch's intra-op pool (at::parallel_for, grain 16 rows). Two variants:
// avx512 (AVX-512 F/DQ: vrndscaleps, masked tails; needs S_k == 1 or G % 16 == 0 so that 16 weights share a
// scale) and scalar (portable C++; any G). The Python side picks one (TORCH_TERNARY_CPU_ISA: avx2 and scalar
// run the scalar loop).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cmath>
#include <vector>

namespace {

inline float clamp_round(float r) {  // clip(round_half_even(r), -1, 1); NaN stays NaN
  float q = std::nearbyint(r);
  return q > 1.f ? 1.f : (q < -1.f ? -1.f : q);
}

void fwd_rows_scalar(const float* W, const float* S, int64_t S_n, int64_t S_k, int64_t G, int64_t K,
                     int64_t n0, int64_t n1, float* out) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* srow = S + (S_n == 1 ? 0 : n) * S_k;
    for (int64_t k = 0; k < K; ++k) {
      const float s = srow[S_k == 1 ? 0 : k / G];
      out[n * K + k] = clamp_round(W[n * K + k] / s) * s;
    }
  }
}

// grad_latent = g where |W/s| <= 1 else 0; partial[n][j] = sum over row n's group j of g * (q - r * inside)
void bwd_rows_scalar(const float* g, const float* W, const float* S, int64_t S_n, int64_t S_k, int64_t G, int64_t K,
                     int64_t n0, int64_t n1, float* gw, double* partial) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* srow = S + (S_n == 1 ? 0 : n) * S_k;
    for (int64_t j = 0; j < S_k; ++j) partial[n * S_k + j] = 0.0;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t j = S_k == 1 ? 0 : k / G;
      const float r = W[n * K + k] / srow[j];
      const bool inside = std::fabs(r) <= 1.f;
      const float gi = g[n * K + k];
      gw[n * K + k] = inside ? gi : 0.f;
      partial[n * S_k + j] += double(gi * (clamp_round(r) - (inside ? r : 0.f)));
    }
  }
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq")
inline __m512 clamp_round16(__m512 r) {
  const __m512 q = _mm512_roundscale_ps(r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_min_ps(_mm512_set1_ps(1.f), _mm512_max_ps(_mm512_set1_ps(-1.f), q));  // NaN: the 2nd operand
}
void fwd_rows_avx512(const float* W, const float* S, int64_t S_n, int64_t S_k, int64_t G, int64_t K,
                     int64_t n0, int64_t n1, float* out) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* srow = S + (S_n == 1 ? 0 : n) * S_k;
    for (int64_t k = 0; k < K; k += 16) {
      const int64_t take = std::min<int64_t>(16, K - k);
      const __mmask16 m = take == 16 ? __mmask16(0xFFFF) : __mmask16((1u << take) - 1);
      const __m512 s = _mm512_set1_ps(srow[S_k == 1 ? 0 : k / G]);
      const __m512 w = _mm512_maskz_loadu_ps(m, W + n * K + k);
      _mm512_mask_storeu_ps(out + n * K + k, m, _mm512_mul_ps(clamp_round16(_mm512_div_ps(w, s)), s));
    }
  }
}
void bwd_rows_avx512(const float* g, const float* W, const float* S, int64_t S_n, int64_t S_k, int64_t G, int64_t K,
                     int64_t n0, int64_t n1, float* gw, double* partial) {
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
  for (int64_t n = n0; n < n1; ++n) {
    const float* srow = S + (S_n == 1 ? 0 : n) * S_k;
    for (int64_t j = 0; j < S_k; ++j) partial[n * S_k + j] = 0.0;
    __m512 acc = _mm512_setzero_ps();
    int64_t j = 0;
    for (int64_t k = 0; k < K; k += 16) {
      const int64_t jk = S_k == 1 ? 0 : k / G;
      if (jk != j) {  // a new group: flush (words never straddle groups: G % 16 == 0)
        partial[n * S_k + j] += double(_mm512_reduce_add_ps(acc));
        acc = _mm512_setzero_ps();
        j = jk;
      }
      const int64_t take = std::min<int64_t>(16, K - k);
      const __mmask16 m = take == 16 ? __mmask16(0xFFFF) : __mmask16((1u << take) - 1);
      const __m512 s = _mm512_set1_ps(srow[jk]);
      const __m512 r = _mm512_div_ps(_mm512_maskz_loadu_ps(m, W + n * K + k), s);
      const __m512 gi = _mm512_maskz_loadu_ps(m, g + n * K + k);
      const __mmask16 inside = _mm512_cmp_ps_mask(_mm512_and_ps(r, absmask), _mm512_set1_ps(1.f), _CMP_LE_OQ);
      _mm512_mask_storeu_ps(gw + n * K + k, m, _mm512_maskz_mov_ps(inside, gi));
      const __m512 t = _mm512_sub_ps(clamp_round16(r), _mm512_maskz_mov_ps(inside, r));
      acc = _mm512_add_ps(acc, _mm512_mul_ps(gi, t));
    }
    partial[n * S_k + j] += double(_mm512_reduce_add_ps(acc));
  }
}
#pragma GCC pop_options
}  // namespace

// out [N, K] = the ternary weight (FORWARD above); vec: the avx512 variant when the granules allow it.
torch::Tensor ste_forward(const torch::Tensor& latent, const torch::Tensor& scale, int64_t G, bool vec) {
  const int64_t N = latent.size(0), K = latent.size(1), S_n = scale.size(0), S_k = scale.size(1);
  auto out = torch::empty_like(latent);
  const float* W = latent.data_ptr<float>(); const float* S = scale.data_ptr<float>(); float* o = out.data_ptr<float>();
  vec = vec && (S_k == 1 || G % 16 == 0);
  at::parallel_for(0, N, 16, [&](int64_t a, int64_t b) {
    if (vec) fwd_rows_avx512(W, S, S_n, S_k, G, K, a, b, o); else fwd_rows_scalar(W, S, S_n, S_k, G, K, a, b, o);
  });
  return out;
}

// {grad_latent [N, K], grad_scale [S_n, S_k]} (BACKWARD above).
std::vector<torch::Tensor> ste_backward(const torch::Tensor& grad, const torch::Tensor& latent, const torch::Tensor& scale,
                                        int64_t G, bool vec) {
  const int64_t N = latent.size(0), K = latent.size(1), S_n = scale.size(0), S_k = scale.size(1);
  auto gw = torch::empty_like(latent);
  auto partial = torch::empty({N, S_k}, latent.options().dtype(at::kDouble));
  const float* g = grad.data_ptr<float>(); const float* W = latent.data_ptr<float>(); const float* S = scale.data_ptr<float>();
  float* o = gw.data_ptr<float>(); double* P = partial.data_ptr<double>();
  vec = vec && (S_k == 1 || G % 16 == 0);
  at::parallel_for(0, N, 16, [&](int64_t a, int64_t b) {
    if (vec) bwd_rows_avx512(g, W, S, S_n, S_k, G, K, a, b, o, P); else bwd_rows_scalar(g, W, S, S_n, S_k, G, K, a, b, o, P);
  });
  auto gs = (S_n == 1 ? partial.sum(0, true) : partial).to(at::kFloat);  // rows summed in a fixed order
  return {gw, gs};
}
