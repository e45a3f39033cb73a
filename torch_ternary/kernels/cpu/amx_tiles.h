// torch-ternary CPU kernels: what the AMX paths share (ternary_cpu.cpp: AMX-INT8; amx_bf16_cpu.cpp: AMX-BF16).
//
// * amx_usable(): the CPU has AMX tiles with INT8 (and, amx_bf16_usable(), BF16) and Linux granted this process
//   the tile state (arch_prctl ARCH_REQ_XCOMP_PERM, asked once).
// * amx_configure(): palette 1, tiles 0..7 all 16 rows x 64 bytes (C: 16 x 16 int32 / float32; A and B: 16 x 64
//   bytes); every AMX loop of the extension uses this one shape. amx_release() ends a thread's tile use.
// * transpose16x16(r): 16 x 16 dwords in 16 zmm registers, r[k][c] -> r[c][k].
// * bf16_rne(v): 16 float32 -> 16 bfloat16, round to nearest even, NaN -> 0x7FC0 (as c10::BFloat16);
//   bf16_to_f32(h): the exact way back.

#pragma once

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>

namespace torch_ternary_amx {

inline bool amx_request_tiles() {
  constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;  // Linux: ask for the tile state
  static const bool ok = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  return ok;
}

inline unsigned cpuid7_edx() {
  unsigned eax, ebx, ecx, edx;
  __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
  return edx;
}

inline bool amx_usable() {  // AMX-TILE + AMX-INT8 (CPUID.7.0:EDX bits 24, 25)
  static const bool ok = ((cpuid7_edx() >> 24) & 1) && ((cpuid7_edx() >> 25) & 1) && amx_request_tiles();
  return ok;
}

inline bool amx_bf16_usable() {  // AMX-TILE + AMX-BF16 (CPUID.7.0:EDX bits 24, 22)
  static const bool ok = ((cpuid7_edx() >> 24) & 1) && ((cpuid7_edx() >> 22) & 1) && amx_request_tiles();
  return ok;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {0};
  uint16_t colsb[16] = {0};
  uint8_t rows[16] = {0};
};

#pragma GCC push_options
#pragma GCC target("amx-tile")

inline void amx_configure() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }
  __asm__ volatile("" : : "r"(&cfg) : "memory");  // GCC does not see ldtilecfg read the struct: keep the stores
  _tile_loadconfig(&cfg);
}

inline void amx_release() { _tile_release(); }

#pragma GCC pop_options

// (AVX-512 only, so that they inline into every AVX-512 function of the extension, AMX or not)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

inline void transpose16x16(__m512i r[16]) {  // 16 x 16 dwords: r[k][c] -> r[c][k]
  __m512i t[16], u[16];
  for (int k = 0; k < 16; k += 2) {
    t[k] = _mm512_unpacklo_epi32(r[k], r[k + 1]);
    t[k + 1] = _mm512_unpackhi_epi32(r[k], r[k + 1]);
  }
  for (int q = 0; q < 4; ++q) {  // u[4q + j], 128-bit lane L: column 4L + j of rows 4q .. 4q + 3
    u[4 * q] = _mm512_unpacklo_epi64(t[4 * q], t[4 * q + 2]);
    u[4 * q + 1] = _mm512_unpackhi_epi64(t[4 * q], t[4 * q + 2]);
    u[4 * q + 2] = _mm512_unpacklo_epi64(t[4 * q + 1], t[4 * q + 3]);
    u[4 * q + 3] = _mm512_unpackhi_epi64(t[4 * q + 1], t[4 * q + 3]);
  }
  for (int j = 0; j < 4; ++j) {  // a 4 x 4 transpose of 128-bit lanes among u[j], u[4 + j], u[8 + j], u[12 + j]
    const __m512i a = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44), b = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44);
    const __m512i c = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xEE), d = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xEE);
    r[j] = _mm512_shuffle_i32x4(a, b, 0x88);
    r[4 + j] = _mm512_shuffle_i32x4(a, b, 0xDD);
    r[8 + j] = _mm512_shuffle_i32x4(c, d, 0x88);
    r[12 + j] = _mm512_shuffle_i32x4(c, d, 0xDD);
  }
}

inline __m512 bf16_to_f32(__m256i h) {  // 16 bfloat16 -> 16 float32 (exact)
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline __m256i bf16_rne(__m512 v) {  // round to nearest even, NaN -> 0x7FC0 (as c10::BFloat16)
  const __m512i u = _mm512_castps_si512(v);
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)),
                                                 _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(r);
}

#pragma GCC pop_options

}  // namespace torch_ternary_amx
