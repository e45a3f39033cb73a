import pytest
import torch
from torch import nn

from torch_ternary import InvalidWeightError, TernaryConfig, TernaryTensor, quantize_
from torch_ternary.calibration.layerwise import (
    GramRecorder,
    alternate,
    calibrate_weight,
    layerwise_calibrate,
    relative_output_error,
)


def correlated_inputs(m, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g) @ (torch.randn(k, k, generator=g) * 0.3) + torch.randn(m, k, generator=g)


def test_closed_form_scale_is_optimal_for_fixed_codes():
    torch.manual_seed(0)
    w = torch.randn(8, 32).double()
    x = correlated_inputs(512, 32).double()
    h = x.T @ x
    q, s = alternate(w, h)
    for factor in (0.9, 0.99, 1.01, 1.1):  # perturbing the scale can only increase the error
        base = relative_output_error(w, s[:, None] * q, h)
        assert relative_output_error(w, factor * s[:, None] * q, h) >= base - 1e-12


def test_layerwise_beats_absmean_and_gptq_beats_layerwise():
    torch.manual_seed(0)
    w = torch.randn(48, 96)
    x = correlated_inputs(2048, 96)
    h = x.T.double() @ x.double()
    e_abs = relative_output_error(w, TernaryTensor.from_float(w).dequantize(), h)
    e_lw = relative_output_error(w, calibrate_weight(w, h).dequantize(), h)
    e_gptq = relative_output_error(w, calibrate_weight(w, h, gptq=True).dequantize(), h)
    assert e_gptq < e_lw < e_abs
    assert e_lw < 0.85 * e_abs


def test_calibrated_weight_is_standard_ternary():
    w = torch.randn(10, 40, dtype=torch.bfloat16)
    h = torch.eye(40)
    tt = calibrate_weight(w, h)
    assert isinstance(tt, TernaryTensor) and tt.dtype == torch.bfloat16 and tt.granularity == "per_channel"
    assert set(tt.codes().unique().tolist()) <= {-1, 0, 1}
    with pytest.raises(InvalidWeightError):
        calibrate_weight(torch.full((2, 16), float("nan")), torch.eye(16))


def test_gram_recorder_and_model_calibration():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16))
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16))
    model.load_state_dict(ref.state_dict())
    quantize_(model, TernaryConfig())
    x = correlated_inputs(256, 32)

    rec = GramRecorder(ref, ["0"], max_rows=100)
    ref(x)
    rec.remove()
    assert rec.rows["0"] == 100 and rec.grams["0"].shape == (32, 32)
    ref(x)
    assert rec.rows["0"] == 100  # hook removed

    before = (model(x) - ref(x)).pow(2).mean()
    errors = layerwise_calibrate(model, ref, lambda m: m(x))
    after = (model(x) - ref(x)).pow(2).mean()
    assert set(errors) == {"0", "2"} and all(a < b for b, a in errors.values())
    assert after < before
