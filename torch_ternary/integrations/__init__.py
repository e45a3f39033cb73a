"""Integrations with other libraries, registered without importing them.

diffusers: ``import torch_ternary`` makes ``quantization_config=TernaryConfig()``,
``PipelineQuantizationConfig(...)`` with a ternary config or ``quant_backend="torch_ternary"``, and
the ``"quant_method": "torch_ternary"`` entry of a saved ``config.json`` known to diffusers, and makes
``save_pretrained`` of a diffusers model ternarized with ``quantize_`` write the ternary format.
diffusers looks quantizers up in module-level dicts and has no registration function;
:mod:`.registration` holds every write into them (and the minimum-version check). They are written:

* if ``diffusers.quantizers.auto`` (and ``transformers.quantizers.auto``, which
  ``PipelineQuantizationConfig`` consults too) is already imported, right away;
* otherwise, if diffusers is installed (``importlib.util.find_spec``, which imports nothing), a
  post-import hook on ``sys.meta_path`` writes them the moment each of those modules finishes
  loading. Every path to ``ModelMixin`` (so to ``from_pretrained``) imports ``diffusers.quantizers.auto``
  first, so registration always precedes the first ``from_pretrained`` call, and ``import torch_ternary``
  stays as fast as without diffusers (importing diffusers' quantizers would add about 2 s).
* if diffusers is missing, nothing happens.

A failed registration never breaks ``import diffusers``: with a diffusers older than
:data:`~.registration.MIN_DIFFUSERS` it is a :class:`~torch_ternary.errors.DiffusersVersionWarning`,
and using the quantizer then raises :class:`~torch_ternary.errors.DiffusersVersionError`.
:func:`register_diffusers` does the registration by hand (idempotent).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

from ..errors import DiffusersVersionError, DiffusersVersionWarning

_AUTO = "diffusers.quantizers.auto"
_TRANSFORMERS_AUTO = "transformers.quantizers.auto"
_TARGETS = (_AUTO, _TRANSFORMERS_AUTO)
_done: set[str] = set()  # the target modules already registered into
_registered = False  # the real diffusers quantizer is registered
_problem: str | None = None  # why it is not (too old a diffusers), once diffusers' quantizers loaded


def register_diffusers() -> bool:
    """Register the torch-ternary quantizer with diffusers; True if diffusers is present, False if not.

    Idempotent. Imports ``diffusers.quantizers.auto`` (and so diffusers) if it is not imported yet.

    Raises:
        DiffusersVersionError: the installed diffusers is older than ``MIN_DIFFUSERS`` (stand-ins that
            raise the same error are registered, so ``from_pretrained`` fails clearly too).
    """
    if not _registered and _problem is None:
        if importlib.util.find_spec("diffusers") is None:
            return False
        from diffusers.quantizers import auto

        _register(_AUTO, auto)
        transformers_auto = sys.modules.get(_TRANSFORMERS_AUTO)
        if transformers_auto is not None:
            _register(_TRANSFORMERS_AUTO, transformers_auto)
    if _problem is not None:
        raise DiffusersVersionError(_problem)
    return True


def _register(name: str, module) -> None:
    """Write torch-ternary's entries into the tables of ``module`` (one of ``_TARGETS``), once."""
    global _registered, _problem
    if name in _done:
        return
    from . import registration

    if name == _AUTO:
        problem = registration.register_into_diffusers(module)
        _registered, _problem = problem is None, problem
        if problem is not None:
            warnings.warn(problem, DiffusersVersionWarning, stacklevel=3)
    else:
        registration.register_into_transformers(module)
    _done.add(name)


def _register_safely(name: str, module) -> None:
    try:
        _register(name, module)
    except Exception as e:  # noqa: BLE001  (never break the import of diffusers or transformers)
        warnings.warn(f"torch-ternary could not register its diffusers quantizer: {e!r}", stacklevel=3)


class _WrappedLoader(importlib.abc.Loader):
    """Delegates to the real loader, then registers once the module has executed."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register_safely(module.__name__, module)
        if all(name in _done for name in _TARGETS):
            _uninstall_hook()

    def __getattr__(self, name):  # get_source, get_code, is_package, ... for tracebacks and inspect
        return getattr(self._loader, name)


class _DiffusersHook(importlib.abc.MetaPathFinder):
    """Finds the modules of ``_TARGETS`` through the other finders and wraps their loaders."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _TARGETS or fullname in _done:
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
    """Called by ``import torch_ternary``: register now, or when the target modules load, or never."""
    global _hook
    if all(name in _done for name in _TARGETS):
        return
    try:
        present = importlib.util.find_spec("diffusers") is not None
    except (ImportError, ValueError):
        present = False
    if not present:
        return
    for name in _TARGETS:
        module = sys.modules.get(name)
        if module is not None:
            _register_safely(name, module)
    if _hook is None and not all(name in _done for name in _TARGETS):
        _hook = _DiffusersHook()
        sys.meta_path.insert(0, _hook)


def __getattr__(name):
    """``from torch_ternary.integrations import TernaryQuantizationConfig`` (imports diffusers on first use)."""
    if name in ("TernaryQuantizationConfig", "TernaryDiffusersQuantizer"):
        register_diffusers()
        from . import diffusers_quantizer

        return getattr(diffusers_quantizer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
