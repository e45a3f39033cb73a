"""Package-level names loaded on first use (PEP 562), so that importing a package costs nothing."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """A module ``__getattr__`` for ``package`` that imports ``exports[name]`` (a relative module) on first use.

    Args:
        package: the package's ``__name__``.
        exports: public name -> module of the package defining it (``".single_file"``).
    """

    def __getattr__(name: str):
        if name in exports:
            module = importlib.import_module(exports[name], package)
            value = getattr(module, name)
            setattr(importlib.import_module(package), name, value)  # later lookups skip __getattr__
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
