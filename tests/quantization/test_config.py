import pytest
from torch import nn

from torch_ternary import TernaryConfig, TernaryConfigError
from torch_ternary.quantization.quantize import select_linears


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 32)) for _ in range(2)])
        self.head = nn.Linear(32, 4)


def test_defaults():
    c = TernaryConfig()
    assert c.granularity == "per_channel" and c.preset == "auto" and c.include is None and c.exclude == ()


def test_round_trip_dict():
    c = TernaryConfig(granularity="per_group", group_size=64, exclude=("head",), include=("blocks.*",), min_numel=10)
    assert TernaryConfig.from_dict(c.to_dict()) == c
    assert TernaryConfig.from_dict(TernaryConfig().to_dict()) == TernaryConfig()


@pytest.mark.parametrize(
    "kwargs",
    [dict(granularity="rows"), dict(granularity="per_group", group_size=10), dict(group_size=0), dict(preset="sdxl"),
     dict(exclude="head"), dict(include=(1,)), dict(min_numel=-1), dict(min_in_features=1.5)],
)
def test_invalid_fields(kwargs):
    with pytest.raises(TernaryConfigError):
        TernaryConfig(**kwargs)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(TernaryConfigError, match="unknown"):
        TernaryConfig.from_dict({"granularity": "per_tensor", "bits": 2})


def test_selection_rules():
    m = Toy()
    all_names = ["embed", "blocks.0.0", "blocks.0.1", "blocks.1.0", "blocks.1.1", "head"]
    assert select_linears(m, TernaryConfig())[0] == all_names
    assert select_linears(m, TernaryConfig(include=("blocks.*",)))[0] == all_names[1:5]
    chosen, kept = select_linears(m, TernaryConfig(exclude=("head", "*.1")))
    assert chosen == ["embed", "blocks.0.0", "blocks.1.0"] and kept == ["blocks.0.1", "blocks.1.1", "head"]
    assert select_linears(m, TernaryConfig(min_numel=1000))[0] == all_names[1:5]
    assert select_linears(m, TernaryConfig(min_in_features=32))[0] == all_names[1:6]
    assert select_linears(m, TernaryConfig(), lambda mod, name: mod.out_features == 32)[0] == ["embed", "blocks.0.1", "blocks.1.1"]
    assert select_linears(m, TernaryConfig(preset="flux"))[0] == []  # no FLUX block lists here
