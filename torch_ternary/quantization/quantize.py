"""``quantize_``: swap matching ``nn.Linear`` weights for ternary ones, in place (torchao style)."""

from __future__ import annotations

import warnings
from typing import Callable

from torch import nn

from ..errors import TernaryConfigError
from ..tensor import TernaryTensor
from .absmean import check_weight
from .config import TernaryConfig, ternarize_linear
from .report import QuantizationReport, model_nbytes

FilterFn = Callable[[nn.Module, str], bool]

#: ``hook(model, config, **info)``, called after a model's weights became ternary (see
#: :func:`register_post_quantize_hook`).
PostQuantizeHook = Callable[..., None]
_post_quantize_hooks: list[PostQuantizeHook] = []


def register_post_quantize_hook(hook: PostQuantizeHook) -> Callable[[], None]:
    """Call ``hook(model, config, **info)`` each time a model's weights become ternary.

    :func:`quantize_` calls the hooks once it is done (``info`` empty); code that loads ternary weights
    into a model may call :func:`run_post_quantize_hooks` too (with ``codec=`` the file's codec). This is
    how a higher layer reacts to quantization without this layer importing it: the diffusers
    integration registers a hook that makes ``save_pretrained`` of a diffusers model write the ternary
    format. Registering the same hook twice keeps one.

    Returns:
        A function that unregisters the hook.
    """
    if hook not in _post_quantize_hooks:
        _post_quantize_hooks.append(hook)

    def remove() -> None:
        if hook in _post_quantize_hooks:
            _post_quantize_hooks.remove(hook)

    return remove


def run_post_quantize_hooks(model: nn.Module, config: TernaryConfig | None, **info) -> None:
    """Run the registered post-quantize hooks on ``model`` (ternarized with ``config``).

    A hook that raises does not undo the quantization: its error becomes a warning.
    """
    for hook in list(_post_quantize_hooks):  # noqa: PERF101  (a hook may unregister itself)
        try:
            hook(model, config, **info)
        except Exception as e:  # noqa: BLE001  (the model is quantized already: a failed extra must not undo that)
            warnings.warn(f"torch-ternary post-quantize hook {getattr(hook, '__qualname__', hook)!r} failed: {e!r}",
                          stacklevel=2)


def select_linears(model: nn.Module, config: TernaryConfig, filter_fn: FilterFn | None = None) -> tuple[list[str], list[str]]:
    """Names of the linears ``config`` (and ``filter_fn``) would ternarize, and of the dense ones left.

    Linears that are already ternary are in neither list.
    """
    preset = config.resolved_preset(model)
    chosen, kept = [], []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or isinstance(module.weight, TernaryTensor):
            continue
        take = config.selects(name, module, preset) and (filter_fn is None or filter_fn(module, name))
        (chosen if take else kept).append(name)
    return chosen, kept


def quantize_(model: nn.Module, config: TernaryConfig | None = None, filter_fn: FilterFn | None = None) -> QuantizationReport:
    """Ternarize the linears of ``model`` in place.

    Every selected ``nn.Linear`` gets its ``weight`` replaced by a :class:`~torch_ternary.TernaryTensor`
    parameter (bias and all other modules untouched). All selected weights are checked first
    (2-D, floating, finite), so a bad weight raises :class:`~torch_ternary.errors.InvalidWeightError`
    before anything in the model changes.

    Args:
        model: any module; a diffusers ``FluxTransformer2DModel`` gets the FLUX preset under the
            default config. Weights may be on CPU, CUDA or meta.
        config: a :class:`TernaryConfig` (default ``TernaryConfig()``).
        filter_fn: optional ``(module, name) -> bool``; a linear is ternarized only if it returns True.

    Then the post-quantize hooks run (:func:`register_post_quantize_hook`): with diffusers imported, a
    diffusers model gets the torch-ternary quantizer attached, so its ``save_pretrained`` writes the
    ternary format and ``from_pretrained`` reloads it with no config.

    Returns:
        A :class:`~torch_ternary.quantization.report.QuantizationReport`.
    """
    config = TernaryConfig() if config is None else config
    if not isinstance(config, TernaryConfig):
        raise TernaryConfigError(f"config must be a TernaryConfig, got {type(config).__name__}")
    chosen, kept = select_linears(model, config, filter_fn)
    modules = dict(model.named_modules())
    for name in chosen:
        check_weight(modules[name].weight, f"{name}.weight")

    report = QuantizationReport(layers_converted=chosen, layers_kept=kept, bytes_before=model_nbytes(model))
    converted: dict[int, nn.Parameter] = {}  # weights shared by several chosen linears stay shared
    for name in chosen:
        module = modules[name]
        key = id(module.weight)
        if key in converted:
            module.weight = converted[key]
            continue
        report.params_quantized += module.weight.numel()
        ternarize_linear(module, config)
        converted[key] = module.weight
    report.params_total = sum(p.numel() for p in model.parameters())
    report.bytes_after = model_nbytes(model)
    model._torch_ternary_config = config
    run_post_quantize_hooks(model, config)
    return report
