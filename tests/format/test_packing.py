import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torch_ternary.errors import TernaryFormatError
from torch_ternary.format import packing


def _random_codes(n, k, seed):
    return torch.randint(-1, 2, (n, k), generator=torch.Generator().manual_seed(seed), dtype=torch.int8)


@given(n=st.integers(1, 40), k=st.integers(1, 200), seed=st.integers(0, 2**16))
def test_pack_unpack_round_trip(n, k, seed):
    codes = _random_codes(n, k, seed)
    packed = packing.pack_codes(codes)
    assert packed.dtype == torch.uint8 and packed.shape == packing.packed_shape(n, k)
    assert packed.shape[1] * 4 >= k and packed.shape[1] % 4 == 0
    assert torch.equal(packing.unpack_codes(packed, k), codes)
    packing.validate_packed_codes(packed, k)


def test_layout_bit_positions():
    """The documented layout: weight j of a word in slot 8*(j%2) + j//2, code = q + 1."""
    for j in range(16):
        codes = torch.zeros(1, 16, dtype=torch.int8)
        codes[0, j] = 1  # code 2 in slot(j), code 1 everywhere else
        word = int(packing.pack_codes(codes).view(torch.int32)[0, 0]) & 0xFFFFFFFF
        slot = 8 * (j % 2) + j // 2
        expected = 0
        for s in range(16):
            expected |= (2 if s == slot else 1) << (2 * s)
        assert word == expected, j


def test_gpu_style_decode_of_a_word():
    """Decode pairs exactly as a kernel would: shift, mask 0x00030003, OR bf16 128.0, subtract 129."""
    codes = torch.randint(-1, 2, (1, 16), dtype=torch.int8)
    word = int(packing.pack_codes(codes).view(torch.int32)[0, 0]) & 0xFFFFFFFF
    out = []
    for i in range(8):
        h = ((word >> (2 * i)) & 0x00030003) | 0x43004300
        pair = torch.tensor([h & 0xFFFF, h >> 16], dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
        out += (pair.float() - 129.0).tolist()
    assert out == codes[0].float().tolist()


def test_pad_is_zero_and_never_returned():
    codes = torch.full((3, 5), -1, dtype=torch.int8)
    packed = packing.pack_codes(codes)
    raw = packing.unpack_raw(packed)
    assert raw.shape == (3, 16) and torch.all(raw[:, 5:] == packing.PAD_CODE)
    assert packing.unpack_codes(packed, 5).shape == (3, 5)


def test_corrupt_code_three_and_nonzero_pad_detected():
    packed = packing.pack_codes(torch.zeros(2, 20, dtype=torch.int8))
    bad = packed.clone()
    bad[0, 0] |= 3  # slot 0 -> code 3
    with pytest.raises(TernaryFormatError, match="code 3"):
        packing.validate_packed_codes(bad, 20)
    bad = packed.clone()
    bad[1, -1] = 0  # pad slots -> code 0 (weight -1)
    with pytest.raises(TernaryFormatError, match="padding"):
        packing.validate_packed_codes(bad, 20)


@pytest.mark.parametrize(
    "packed,k",
    [(torch.zeros(2, 4, dtype=torch.int32), 16), (torch.zeros(2, 4, dtype=torch.uint8), 17),
     (torch.zeros(8, dtype=torch.uint8), 16), (torch.zeros(2, 4, dtype=torch.uint8), 0)],
)
def test_bad_packed_shapes(packed, k):
    with pytest.raises(TernaryFormatError):
        packing.unpack_codes(packed, k)


def test_int8_style_decode_of_a_word():
    """docs/format.md: ((word >> 2i) & 0x03030303), minus 1 per byte, holds weights 2i, 2i+8, 2i+1, 2i+9 in bytes 0..3."""
    codes = torch.randint(-1, 2, (1, 16), dtype=torch.int8)
    word = int(packing.pack_codes(codes).view(torch.int32)[0, 0]) & 0xFFFFFFFF
    for i in range(4):
        v = (word >> (2 * i)) & 0x03030303
        got = [((v >> (8 * b)) & 0xFF) - 1 for b in range(4)]  # byte-wise subtract (__vsub4)
        assert got == [int(codes[0, j]) for j in (2 * i, 2 * i + 8, 2 * i + 1, 2 * i + 9)]
