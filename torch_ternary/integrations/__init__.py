"""Integrations with other libraries, registered without importing them.

diffusers: ``import torch_ternary`` makes ``quantization_config=TernaryConfig()`` (and the
``"quant_method": "torch_ternary"`` entry of a saved ``config.json``) known to diffusers'
``from_pretrained``. diffusers looks quantizers up in two module-level dicts of
``diffusers.quantizers.auto`` and has no registration function, so torch-ternary adds its entries to
those dicts:

* if ``diffusers.quantizers.auto`` is already imported, right away;
* otherwise, if diffusers is installed (``importlib.util.find_spec``, which imports nothing), a
  post-import hook on ``sys.meta_path`` adds them the moment ``diffusers.quantizers.auto`` finishes
  loading. Every path to ``ModelMixin.from_pretrained`` imports that module first, so registration
  always precedes the first ``from_pretrained`` call, and ``import torch_ternary`` stays as fast as
  without diffusers (importing diffusers' quantizers would add about 2 s).
* if diffusers is missing, nothing happens.

:func:`register_diffusers` does the registration by hand (idempotent); it is what the hook calls.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

_AUTO = "diffusers.quantizers.auto"
_registered = False


def register_diffusers() -> bool:
    """Add the torch-ternary quantizer to diffusers' quantizer tables; True if diffusers is present.

    Idempotent. Imports ``diffusers.quantizers.auto`` (and so diffusers) if it is not imported yet.
    """
    if _registered:
        return True
    if importlib.util.find_spec("diffusers") is None:
        return False
    from diffusers.quantizers import auto

    _register_into(auto)
    return True


def _register_into(auto) -> None:
    global _registered
    from .diffusers_quantizer import QUANT_METHOD, TernaryDiffusersQuantizer, TernaryQuantizationConfig

    auto.AUTO_QUANTIZER_MAPPING[QUANT_METHOD] = TernaryDiffusersQuantizer
    auto.AUTO_QUANTIZATION_CONFIG_MAPPING[QUANT_METHOD] = TernaryQuantizationConfig
    _registered = True


class _WrappedLoader(importlib.abc.Loader):
    """Delegates to the real loader, then registers once the module has executed."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _uninstall_hook()
        try:
            _register_into(module)
        except Exception as e:  # never break diffusers' own import
            warnings.warn(f"torch-ternary could not register its diffusers quantizer: {e!r}", stacklevel=2)

    def __getattr__(self, name):  # get_source, get_code, is_package, ... for tracebacks and inspect
        return getattr(self._loader, name)


class _DiffusersHook(importlib.abc.MetaPathFinder):
    """Finds ``diffusers.quantizers.auto`` through the other finders and wraps its loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _AUTO:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _WrappedLoader(spec.loader)
                return spec
        return None


_hook: _DiffusersHook | None = None


def _uninstall_hook() -> None:
    global _hook
    if _hook is not None and _hook in sys.meta_path:
        sys.meta_path.remove(_hook)
    _hook = None


def install() -> None:
    """Called by ``import torch_ternary``: register now, or when diffusers' quantizers load, or never."""
    global _hook
    if _registered:
        return
    module = sys.modules.get(_AUTO)
    if module is not None:
        try:
            _register_into(module)
        except Exception as e:
            warnings.warn(f"torch-ternary could not register its diffusers quantizer: {e!r}", stacklevel=2)
        return
    try:
        present = importlib.util.find_spec("diffusers") is not None
    except (ImportError, ValueError):
        present = False
    if present and _hook is None:
        _hook = _DiffusersHook()
        sys.meta_path.insert(0, _hook)


def __getattr__(name):
    """``from torch_ternary.integrations import TernaryQuantizationConfig`` (imports diffusers on first use)."""
    if name in ("TernaryQuantizationConfig", "TernaryDiffusersQuantizer"):
        register_diffusers()
        from . import diffusers_quantizer

        return getattr(diffusers_quantizer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
