"""The import paths of torch-ternary 0.1.0, before the package was grouped by layer.

Every module name that 0.1.0 had still imports: a module that moved whole imports as the very module
it became (``torch_ternary.packing is torch_ternary.format.packing``); a module that was split
(``serialization``, ``ops_a8``) imports as a read-only view whose attributes are looked up in its parts,
in order. :data:`LEGACY_MODULES` is the whole table; ``tests/test_legacy_imports.py`` checks every path
that README, docs, benchmarks and tests used at 0.1.0. New code imports the new paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

_FORMAT = "torch_ternary.format."
#: old module name -> the module(s) that hold its names now
LEGACY_MODULES: dict[str, tuple[str, ...]] = {
    "torch_ternary.base3": (_FORMAT + "base3",),
    "torch_ternary.packing": (_FORMAT + "packing",),
    "torch_ternary.quant_math": ("torch_ternary.quantization.absmean",),
    "torch_ternary.config": ("torch_ternary.quantization.config",),
    "torch_ternary.quantize": ("torch_ternary.quantization.quantize",),
    "torch_ternary.report": ("torch_ternary.quantization.report",),
    "torch_ternary.ops_a8": ("torch_ternary.ops.ternary_linear_a8", "torch_ternary.quantization.activations"),
    "torch_ternary.serialization": tuple(_FORMAT + m for m in (
        "single_file", "folder", "convert", "state_dict", "codes", "header", "loading", "streaming", "atomic", "memory")),
    "torch_ternary.flux": ("torch_ternary.testing.flux",),
    "torch_ternary.pipelines": ("torch_ternary.testing.pipelines",),
}


class _SplitModule(types.ModuleType):
    """A 0.1.0 module that was split: attributes come from its parts, first match wins."""

    def __init__(self, name: str, parts: list[types.ModuleType]):
        super().__init__(name, f"torch-ternary 0.1.0's {name}, now split into {', '.join(p.__name__ for p in parts)}")
        self._parts = parts

    def __getattr__(self, attr: str):
        for part in object.__getattribute__(self, "_parts"):
            if hasattr(part, attr):
                return getattr(part, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")

    def __dir__(self):
        return sorted({n for p in self._parts for n in dir(p)})


class _LegacyFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname not in LEGACY_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        parts = [importlib.import_module(p) for p in LEGACY_MODULES[spec.name]]
        if len(parts) == 1:
            self._spec = parts[0].__spec__  # the import system overwrites __spec__: put it back in exec_module
            return parts[0]
        return _SplitModule(spec.name, parts)

    def exec_module(self, module):
        if not isinstance(module, _SplitModule):
            module.__spec__ = self._spec


_finder = _LegacyFinder()


def install() -> None:
    """Put the finder on ``sys.meta_path`` (idempotent). Called by ``import torch_ternary``."""
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def resolve(name: str):
    """``torch_ternary.<name>`` for a 0.1.0 top-level module name (the package ``__getattr__``), else None."""
    full = f"torch_ternary.{name}"
    return importlib.import_module(full) if full in LEGACY_MODULES else None
