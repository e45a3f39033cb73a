"""FSDP2 units of a calibration student (:func:`torch_ternary.calibration.parallel.fsdp_units`) on the real
FLUX.1-dev config (on the meta device) and on Mini FLUX; the micro-batches of gradient accumulation
(:func:`~torch_ternary.calibration.parallel.micro_batches`)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_ternary.calibration.distributed import Ranks
from torch_ternary.calibration.parallel import FSDP_MIN_UNIT_PARAMS, fsdp_units, micro_batches
from torch_ternary.mini.model import TRANSFORMER_CONFIG
from torch_ternary.testing.flux import FLUX_DEV_CONFIG, build_flux


def test_every_flux_dev_block_is_a_unit_of_its_own():
    model = build_flux(FLUX_DEV_CONFIG, device="meta", dtype=torch.bfloat16)
    units = fsdp_units(model)
    blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
    assert len(blocks) == 19 + 38 and [u for unit in units for u in unit] == blocks
    assert all(len(unit) == 1 for unit in units)
    assert min(sum(p.numel() for p in u[0].parameters()) for u in units) >= FSDP_MIN_UNIT_PARAMS


def test_small_blocks_are_grouped_and_the_rest_stays_in_the_root():
    model = build_flux(TRANSFORMER_CONFIG, device="cpu", dtype=torch.float32)
    blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
    sizes = [sum(p.numel() for p in b.parameters()) for b in blocks]
    assert fsdp_units(model) == []  # Mini FLUX: below one unit's worth, the root holds everything
    units = fsdp_units(model, min_params=sizes[0] + sizes[1])
    assert units[0] == blocks[:2] and all(sum(sizes[blocks.index(b)] for b in u) >= sizes[0] + sizes[1] for u in units)
    flat = [b for u in units for b in u]
    assert flat == blocks[:len(flat)]  # consecutive, in order; the remainder is the root's


@settings(max_examples=300, deadline=None)
@given(units=st.integers(1, 40), world=st.integers(1, 8), micro=st.integers(0, 12), unit=st.sampled_from([1, 2]))
def test_micro_batches_cover_each_part_once_in_equal_counts(units, world, micro, unit):
    world = min(world, units)  # every rank has records (distill refuses a smaller batch)
    n = units * unit
    pieces = [micro_batches(n, micro, Ranks(r, world), unit=unit) for r in range(world)]
    assert len({len(p) for p in pieces}) == 1  # the same number of forward / backward passes on every rank
    covered = []
    for r, rank_pieces in enumerate(pieces):
        start, stop = Ranks(r, world).part(units)
        live = [(lo, hi) for lo, hi, on in rank_pieces if on]
        assert live == sorted(live) and live[0][0] == start * unit and live[-1][1] == stop * unit
        for lo, hi in live:
            assert lo % unit == 0 and hi % unit == 0 and 0 < hi - lo <= max(micro // unit, 1) * unit or not micro
            covered.extend(range(lo, hi))
        for lo, hi, on in rank_pieces:  # padding: one unit of the rank's own records, weighed 0 by the loss
            assert on or (lo, hi) == (start * unit, (start + 1) * unit)
        assert all(on for *_, on in rank_pieces[:len(live)])
    assert covered == list(range(n))  # every record once, in order


def test_one_process_sums_the_pieces_that_n_ranks_compute():
    for n, world in ((5, 2), (6, 3), (8, 4), (32, 8), (7, 2)):
        per_rank = -(-n // world)
        one = micro_batches(n, per_rank, Ranks())
        parts = [micro_batches(n, per_rank, Ranks(r, world)) for r in range(world)]
        assert [p[:2] for p in one] == [Ranks(r, world).part(n) for r in range(world)]
        assert [p[0][:2] for p in parts] == [Ranks(r, world).part(n) for r in range(world)]
        assert all(len(p) == 1 for p in parts) and all(on for _, _, on in one)
    assert micro_batches(5, 0, Ranks()) == [(0, 5, True)]  # 0: the whole part in one pass
