"""FSDP2 units of a calibration student (:func:`torch_ternary.calibration.parallel.fsdp_units`) on the real
FLUX.1-dev config (on the meta device) and on Mini FLUX."""

from __future__ import annotations

import torch

from torch_ternary.calibration.parallel import FSDP_MIN_UNIT_PARAMS, fsdp_units
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
