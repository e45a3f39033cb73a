"""The one place where torch-ternary writes into diffusers' (and transformers') private tables.

diffusers has no registration API for third-party quantizers: ``from_pretrained`` and
``PipelineQuantizationConfig`` look quantization methods up in module-level dicts. Every write into
them is in this module (:data:`TABLES` lists them; ``tests/integrations/test_registration.py`` checks
that they exist in the installed diffusers and hold what is written here):

* ``diffusers.quantizers.auto.AUTO_QUANTIZER_MAPPING``: ``"torch_ternary"`` -> the quantizer class
  (``from_pretrained(..., quantization_config=...)`` and folders whose ``config.json`` says
  ``"quant_method": "torch_ternary"``);
* ``diffusers.quantizers.auto.AUTO_QUANTIZATION_CONFIG_MAPPING``: ``"torch_ternary"`` -> the config
  class (``config.json`` parsing; ``PipelineQuantizationConfig(quant_mapping=...)`` accepts a config
  only if it is an instance of one of these classes, ``quant_backend=...`` only if it is a key here);
* ``transformers.quantizers.auto.AUTO_QUANTIZATION_CONFIG_MAPPING``: ``"torch_ternary"`` -> a config
  class that refuses to be built. ``PipelineQuantizationConfig(quant_backend=...)`` requires the
  backend in transformers' table as well (with the same ``__init__`` parameters), although
  torch-ternary quantizes diffusers models only; a transformers component (a text encoder) asked to
  be quantized gets a clear :class:`~torch_ternary.errors.TernaryConfigError`.

Minimum diffusers: the quantizer relies on these ``DiffusersQuantizer`` hooks; the version is the first
diffusers release that both defines the hook on ``DiffusersQuantizer`` and calls it (read from the
released wheels, 0.31.0 to 0.42.1):

* 0.31.0: ``update_torch_dtype``, ``check_if_quantized_param``, ``create_quantized_param``,
  ``update_missing_keys``, ``is_serializable``, ``_process_model_before_weight_loading``,
  ``_process_model_after_weight_loading``, ``_dequantize``;
* 0.34.0: ``PipelineQuantizationConfig`` (``diffusers.quantizers``);
* 0.35.0: ``get_cuda_warm_up_factor``;
* 0.39.0: ``maybe_update_loaded_keys``, ``maybe_update_state_dict``, ``supports_parallel_loading``,
  ``get_state_dict_and_metadata``, ``supports_safetensors_serialization``;
* defined but never called by diffusers: ``is_trainable`` (0.31.0), ``is_compileable`` (0.34.0);

so :data:`MIN_DIFFUSERS` is 0.39.0: before it, ternary checkpoint keys are not remapped on load
(``maybe_update_loaded_keys``) and ``save_pretrained`` hands ``TernaryTensor`` parameters to
safetensors (``get_state_dict_and_metadata``). Registration checks the installed diffusers (its
version, and every hook of :data:`HOOKS` by attribute presence on ``DiffusersQuantizer``); on a too-old
diffusers it issues a :class:`~torch_ternary.errors.DiffusersVersionWarning` (``import diffusers``
keeps working) and registers stand-ins that raise
:class:`~torch_ternary.errors.DiffusersVersionError` as soon as ``from_pretrained`` (or a pipeline)
is asked to use ``"torch_ternary"``.
"""

from __future__ import annotations

import inspect
from types import ModuleType

from ..errors import DiffusersVersionError, TernaryConfigError
from ..quantization.config import TernaryConfig
from ..quantization.quantize import register_post_quantize_hook
from .quant_method import QUANT_METHOD, AcceptsTernaryConfig, TernaryQuantizationMethod  # noqa: F401

#: The oldest diffusers release the quantizer works with (``pyproject.toml``: ``diffusers>=0.39``).
MIN_DIFFUSERS = "0.39.0"

#: ``DiffusersQuantizer`` hooks the quantizer overrides and diffusers calls -> first release that has and calls it.
HOOKS: dict[str, str] = {
    "update_torch_dtype": "0.31.0",
    "check_if_quantized_param": "0.31.0",
    "create_quantized_param": "0.31.0",
    "update_missing_keys": "0.31.0",
    "is_serializable": "0.31.0",
    "_process_model_before_weight_loading": "0.31.0",
    "_process_model_after_weight_loading": "0.31.0",
    "_dequantize": "0.31.0",
    "get_cuda_warm_up_factor": "0.35.0",
    "maybe_update_loaded_keys": "0.39.0",
    "maybe_update_state_dict": "0.39.0",
    "supports_parallel_loading": "0.39.0",
    "get_state_dict_and_metadata": "0.39.0",
    "supports_safetensors_serialization": "0.39.0",
}

#: Every private table registration writes into: (module, attribute).
TABLES: tuple[tuple[str, str], ...] = (
    ("diffusers.quantizers.auto", "AUTO_QUANTIZER_MAPPING"),
    ("diffusers.quantizers.auto", "AUTO_QUANTIZATION_CONFIG_MAPPING"),
    ("transformers.quantizers.auto", "AUTO_QUANTIZATION_CONFIG_MAPPING"),
)

#: ``__init__`` parameters of the config classes. ``PipelineQuantizationConfig(quant_backend=...)``
#: compares the names of diffusers' and transformers' config classes; the stand-ins below get these,
#: the same as :class:`~torch_ternary.integrations.diffusers_quantizer.TernaryQuantizationConfig`.
CONFIG_INIT_SIGNATURE = inspect.Signature([
    inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    inspect.Parameter("config", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
    inspect.Parameter("codec", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="base3"),
    inspect.Parameter("torch_dtype", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
    inspect.Parameter("format_version", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
    inspect.Parameter("quant_method", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=QUANT_METHOD.value),
    inspect.Parameter("fields", inspect.Parameter.VAR_KEYWORD),
])


# ---------------------------------------------------------------------- the version check
def _version_tuple(version: str) -> tuple:
    from packaging.version import Version  # a dependency of diffusers (and huggingface_hub)

    return Version(version).release


def missing_hooks(quantizer_base: type) -> list[str]:
    """The names of :data:`HOOKS` that ``quantizer_base`` (diffusers' ``DiffusersQuantizer``) lacks."""
    return [name for name in HOOKS if not hasattr(quantizer_base, name)]


def diffusers_problem(version: str | None = None, quantizer_base: type | None = None) -> str | None:
    """Why the installed diffusers cannot run the quantizer, or None if it can.

    Args:
        version: the diffusers version (default: ``diffusers.__version__``).
        quantizer_base: diffusers' ``DiffusersQuantizer`` class (default: the installed one).
    """
    if version is None:
        import diffusers

        version = diffusers.__version__
    if quantizer_base is None:
        from diffusers.quantizers.base import DiffusersQuantizer as quantizer_base
    missing = missing_hooks(quantizer_base)
    old = _version_tuple(version) < _version_tuple(MIN_DIFFUSERS)
    if not missing and not old:
        return None
    why = f"it lacks the quantizer hooks {', '.join(missing)}" if missing else "it is older than the minimum"
    return (f"torch-ternary's diffusers quantizer needs diffusers>={MIN_DIFFUSERS}, the installed diffusers is "
            f"{version} ({why}): upgrade it with pip install -U 'diffusers>={MIN_DIFFUSERS}'")


def check_diffusers(version: str | None = None, quantizer_base: type | None = None) -> None:
    """Raise :class:`~torch_ternary.errors.DiffusersVersionError` if the installed diffusers is too old."""
    problem = diffusers_problem(version, quantizer_base)
    if problem is not None:
        raise DiffusersVersionError(problem)


# ---------------------------------------------------------------------- stand-ins
def _too_old_classes(problem: str) -> tuple[type, type]:
    """A quantizer class and a config class that raise ``DiffusersVersionError(problem)`` when used."""

    def refuse(*args, **kwargs):
        raise DiffusersVersionError(problem)

    refuse.__signature__ = CONFIG_INIT_SIGNATURE
    quantizer = type("TernaryDiffusersQuantizerUnavailable", (), {"__init__": refuse, "__doc__": problem})
    config = AcceptsTernaryConfig("TernaryQuantizationConfigUnavailable", (), {
        "__init__": refuse, "from_dict": classmethod(refuse), "quant_method": QUANT_METHOD, "__doc__": problem,
    })
    return quantizer, config


_NOT_FOR_TRANSFORMERS = (
    "torch-ternary quantizes diffusers models (the FLUX transformer), not transformers models such as the text "
    "encoders: with PipelineQuantizationConfig(quant_backend='torch_ternary', ...) name the diffusers components "
    "in components_to_quantize (e.g. ['transformer']), or use quant_mapping={'transformer': TernaryConfig()}"
)


def _refuse_transformers(*args, **kwargs):
    raise TernaryConfigError(_NOT_FOR_TRANSFORMERS)


_refuse_transformers.__signature__ = CONFIG_INIT_SIGNATURE


class TernaryTransformersConfig:
    """What transformers' table holds for ``"torch_ternary"``: building it raises ``TernaryConfigError``."""

    quant_method = QUANT_METHOD
    __init__ = _refuse_transformers
    from_dict = classmethod(_refuse_transformers)


# ---------------------------------------------------------------------- the writes
def register_into_diffusers(auto: ModuleType) -> str | None:
    """Add ``"torch_ternary"`` to ``auto``'s (``diffusers.quantizers.auto``) two tables.

    With a compatible diffusers: the real quantizer and config classes, and the post-quantize hook that
    makes ``save_pretrained`` write the ternary format after ``quantize_``. Otherwise stand-ins that raise
    :class:`~torch_ternary.errors.DiffusersVersionError` when used.

    Returns:
        None if the real quantizer was registered, else why not (the message of the error).
    """
    TernaryConfig.quant_method = QUANT_METHOD  # DiffusersAutoQuantizer.from_config reads config.quant_method
    problem = diffusers_problem()
    if problem is None:
        try:
            from .diffusers_quantizer import TernaryDiffusersQuantizer, TernaryQuantizationConfig, attach_quantizer
        except ImportError as e:
            problem = f"torch-ternary's diffusers quantizer cannot be imported with this diffusers: {e}"
    if problem is None:
        quantizer, config = TernaryDiffusersQuantizer, TernaryQuantizationConfig
    else:
        quantizer, config = _too_old_classes(problem)
    auto.AUTO_QUANTIZER_MAPPING[QUANT_METHOD] = quantizer
    auto.AUTO_QUANTIZATION_CONFIG_MAPPING[QUANT_METHOD] = config
    if problem is None:
        register_post_quantize_hook(attach_quantizer)
    return problem


def register_into_transformers(auto: ModuleType) -> None:
    """Add ``"torch_ternary"`` to ``auto``'s (``transformers.quantizers.auto``) config table (see the module doc)."""
    auto.AUTO_QUANTIZATION_CONFIG_MAPPING[QUANT_METHOD] = TernaryTransformersConfig
