// torch-ternary: expand a packed ternary weight into the int8 / fp8 e4m3 operand of a W1.58A8 GEMM
// (`torch._int_mm` / `torch._scaled_mm`), one layer at a time, into a workspace the caching
// allocator recycles from layer to layer.
//
// Layout (see common.cuh and docs/format.md): packed codes uint8 [N, Kp/4] read as u32 words
// [N, kblocks], kblocks = Kp/16; word kb of row n holds weights k = 16*kb .. 16*kb+15, weight j in
// slot 8*(j%2) + j/2, code c = q + 1 (pad slots k >= K hold c = 1, i.e. q = 0).
//
// Output: uint8 [Np, Kp] row-major (Np >= N): w[n, k] = q[n, k] as an int8 (0xFF, 0x00, 0x01) or as
// e4m3fn bits (-1 -> 0xB8, 0 -> 0x00, +1 -> 0x38), pad columns K .. Kp-1 = 0 (from the pad codes),
// pad rows N .. Np-1 = 0, so GEMM shapes can be rounded up to what cuBLAS wants (K, N multiples of
// 16) without touching the result. Scales are not applied: they go in the GEMM epilogue.
//
// Thread mapping: one thread per packed word (16 weights, one 128-bit store of 16 bytes); grid.x *
// blockDim.x threads cover a row's kblocks words, grid.y walks the Np rows (grid-stride past
// 65535). A warp reads 128 contiguous bytes of one packed row and writes 512 contiguous bytes.
// Memory bound: 0.25 byte read and 1 byte written per weight.
#include "common.cuh"

namespace tt {

// The 16 codes c in {0, 1, 2} of a word as bytes in logical weight order: out[0] holds weights
// 0..3 (byte b = weight b), out[1] 4..7, out[2] 8..11, out[3] 12..15.
// v_i = (w >> 2i) & 0x03030303 holds the codes of weights (2i, 2i+8, 2i+1, 2i+9) in bytes 0..3.
__device__ __forceinline__ void word_codes(u32 w, u32 (&out)[4]) {
  const u32 v0 = w & 0x03030303u;
  const u32 v1 = (w >> 2) & 0x03030303u;
  const u32 v2 = (w >> 4) & 0x03030303u;
  const u32 v3 = (w >> 6) & 0x03030303u;
  out[0] = __byte_perm(v0, v1, 0x6420);  // weights 0, 1, 2, 3
  out[1] = __byte_perm(v2, v3, 0x6420);  // weights 4, 5, 6, 7
  out[2] = __byte_perm(v0, v1, 0x7531);  // weights 8, 9, 10, 11
  out[3] = __byte_perm(v2, v3, 0x7531);  // weights 12, 13, 14, 15
}

// Four codes (one a byte) -> four int8 weights q = c - 1.
__device__ __forceinline__ u32 codes_to_i8(u32 c) { return __vsub4(c, 0x01010101u); }

// Four codes (one a byte) -> four e4m3fn weights: c = 0 -> 0xB8 (-1), 1 -> 0x00, 2 -> 0x38 (+1).
// nz = 1 where c != 1 (c ^ 1 has bit 0 set for c in {0, 2}); neg = nz where bit 1 of c is clear.
// Every byte of nz / neg is 0 or 1, so `* 0x38` and `<< 7` stay inside their byte.
__device__ __forceinline__ u32 codes_to_e4m3(u32 c) {
  const u32 nz = (c ^ 0x01010101u) & 0x01010101u;
  const u32 neg = nz & ~(c >> 1) & 0x01010101u;
  return nz * 0x38u | (neg << 7);
}

template <bool kE4M3>
__device__ __forceinline__ void a8_weight_impl(unsigned char* __restrict__ out, const u32* __restrict__ packed,
                                               int n_rows, int n_pad_rows, int kblocks) {
  const int kb = blockIdx.x * blockDim.x + threadIdx.x;
  if (kb >= kblocks) return;
  const long long kp = 16LL * kblocks;
  for (int n = blockIdx.y; n < n_pad_rows; n += gridDim.y) {
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (n < n_rows) {
      u32 c[4];
      word_codes(ldg32(packed + (long long)n * kblocks + kb), c);
      if constexpr (kE4M3) {
        v = make_uint4(codes_to_e4m3(c[0]), codes_to_e4m3(c[1]), codes_to_e4m3(c[2]), codes_to_e4m3(c[3]));
      } else {
        v = make_uint4(codes_to_i8(c[0]), codes_to_i8(c[1]), codes_to_i8(c[2]), codes_to_i8(c[3]));
      }
    }
    *reinterpret_cast<uint4*>(out + (long long)n * kp + 16LL * kb) = v;
  }
}

}  // namespace tt

// ------------------------------------------------------------------------------ entry points
//   out        : uint8 [n_pad_rows, 16*kblocks], 16-byte aligned, contiguous
//   packed     : uint8 [n_rows, 4*kblocks] read as u32 [n_rows, kblocks]
//   n_pad_rows : Np >= n_rows; rows n_rows .. Np-1 are zero-filled
// Launch: block (min(256, round_up(kblocks, 32)), 1, 1), grid (ceil(kblocks / block.x), min(Np, 65535), 1).
extern "C" __global__ void tt_a8_weight_i8(unsigned char* __restrict__ out, const tt::u32* __restrict__ packed,
                                           int n_rows, int n_pad_rows, int kblocks) {
  tt::a8_weight_impl<false>(out, packed, n_rows, n_pad_rows, kblocks);
}

extern "C" __global__ void tt_a8_weight_e4m3(unsigned char* __restrict__ out, const tt::u32* __restrict__ packed,
                                             int n_rows, int n_pad_rows, int kblocks) {
  tt::a8_weight_impl<true>(out, packed, n_rows, n_pad_rows, kblocks);
}
