"""A bit-for-bit picture of a model's state, to prove that a failed load changed nothing."""

import torch

from torch_ternary import TernaryTensor


def _bytes(t: torch.Tensor) -> bytes:
    if t.device.type == "meta":
        return b"meta"
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def snapshot(model: torch.nn.Module) -> dict:
    """Every parameter and buffer: the object itself, its class, dtype, shape, device, requires_grad and bytes."""
    out = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        data = (_bytes(t.packed), _bytes(t.scale), t.group_size, t.activations) if isinstance(t, TernaryTensor) else _bytes(t)
        out[name] = (id(t), type(t), t.dtype, tuple(t.shape), t.device.type, t.requires_grad, data)
    out["__config__"] = repr(getattr(model, "_torch_ternary_config", None))
    return out
