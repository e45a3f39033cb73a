import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torch_ternary.errors import TernaryFormatError
from torch_ternary.format.base3 import decode_base3, encode_base3, encoded_nbytes


@given(shape=st.lists(st.integers(1, 23), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_round_trip_any_shape(shape, seed):
    codes = torch.randint(-1, 2, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)
    data = encode_base3(codes)
    assert data.dtype == torch.uint8 and data.numel() == encoded_nbytes(codes.numel())
    assert int(data.max()) <= 242
    assert torch.equal(decode_base3(data, codes.numel()).reshape(shape), codes)


def test_byte_formula():
    codes = torch.tensor([1, -1, 0, 1, 1, 0, -1], dtype=torch.int8)  # c = 2,0,1,2,2 | 1,0,(1,1,1 pad)
    data = encode_base3(codes)
    assert data.tolist() == [2 + 0 * 3 + 1 * 9 + 2 * 27 + 2 * 81, 1 + 0 * 3 + 1 * 9 + 1 * 27 + 1 * 81]


def test_density_is_1_6_bits():
    assert encoded_nbytes(5_000_000) * 8 / 5_000_000 == pytest.approx(1.6)


def test_rejects_corruption():
    data = encode_base3(torch.zeros(12, dtype=torch.int8))
    with pytest.raises(TernaryFormatError, match="above 242"):
        decode_base3(torch.cat([data[:-1], torch.tensor([250], dtype=torch.uint8)]), 12)
    with pytest.raises(TernaryFormatError, match="bytes"):
        decode_base3(data[:-1], 12)
    bad = data.clone()
    bad[-1] = 0  # pad trits of the last byte must be c=1
    with pytest.raises(TernaryFormatError, match="pad"):
        decode_base3(bad, 12)
    with pytest.raises(TernaryFormatError):
        decode_base3(data.to(torch.int16), 12)
