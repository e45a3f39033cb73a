import torch
from torch import nn

from torch_ternary import TernaryConfig, TernaryTensor, quantize_
from torch_ternary.calibration.trainable import (
    TrainableTernaryLinear,
    export_ternary,
    make_trainable,
    round_ste,
    ste_ternary_weight,
)


def test_round_ste_gradient_is_identity():
    x = torch.tensor([0.2, 0.7, -1.4], requires_grad=True)
    round_ste(x).sum().backward()
    assert torch.equal(round_ste(x.detach()), torch.round(x.detach()))
    assert torch.equal(x.grad, torch.ones(3))


def test_ste_weight_values_and_gradients():
    latent = torch.tensor([[0.1, 0.6, -2.0, 0.9]], requires_grad=True)
    scale = torch.tensor([[1.0]], requires_grad=True)
    w = ste_ternary_weight(latent, scale, 4)
    assert w.tolist() == [[0.0, 1.0, -1.0, 1.0]]
    w.sum().backward()
    assert latent.grad.tolist() == [[1.0, 1.0, 0.0, 1.0]]  # clipped entry gets no gradient
    # LSQ: d/ds [s * round(clip(w/s))] = round(v) - v inside the clip, the clipped code outside
    assert abs(scale.grad.item() - ((0 - 0.1) + (1 - 0.6) + (-1.0) + (1 - 0.9))) < 1e-6


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    ref = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    ref.load_state_dict(m.state_dict())
    quantize_(m, TernaryConfig())
    return m, ref


def test_scales_only_mode_matches_ternary_forward_and_trains_scales():
    m, _ = _model()
    x = torch.randn(5, 16)
    y0 = m(x)
    names = make_trainable(m)
    assert names == ["0", "2"] and isinstance(m[0], TrainableTernaryLinear) and m[0].latent is None
    torch.testing.assert_close(m(x), y0)
    m(x).pow(2).sum().backward()
    assert m[0].scale.grad is not None and m[0].scale.grad.abs().sum() > 0
    assert m[0].bias.grad is None


def test_qat_mode_starts_from_the_full_precision_weights_and_exports():
    m, ref = _model()
    make_trainable(m, latent_from=ref)
    assert torch.equal(m[0].latent.detach(), ref[0].weight.detach())
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05)
    x = torch.randn(64, 16)
    for _ in range(20):
        loss = (m(x) - ref(x).detach()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    y = m(x)
    assert export_ternary(m) == ["0", "2"]
    assert type(m[0]) is nn.Linear and isinstance(m[0].weight, TernaryTensor)
    torch.testing.assert_close(m(x), y, rtol=1e-5, atol=1e-5)  # exported = trained forward
