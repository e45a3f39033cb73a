"""The bytes of ternary weights: the in-memory packed layout, the base-3 codec, and files and folders.

Modules, from the bottom up (docs/format.md is the spec, docs/architecture.md the layering):

- :mod:`.packing`: the 2-bit in-memory layout ``k16-interleaved-v1`` (what ops and kernels read);
- :mod:`.base3`: the base-3 file codec (5 weights a byte);
- :mod:`.header`: the JSON header of a ternary file, its constants and checks;
- :mod:`.codes`: a ternary weight's stored codes and scales, in either codec;
- :mod:`.state_dict`: a model's state dict as a file holds it (plain tensors, aliases, header);
- :mod:`.loading`: reading a checkpoint into a model;
- :mod:`.single_file`: ``save_quantized`` / ``load_quantized``;
- :mod:`.streaming`: the streaming safetensors writer; :mod:`.folder`: diffusers-layout folders;
- :mod:`.convert`: a plain safetensors state dict ternarized tensor by tensor;
- :mod:`.atomic`, :mod:`.memory`: atomic writes, giving freed memory back to the OS.

The public functions below are importable from this package; they are loaded on first use, so
``import torch_ternary.format.packing`` (what the ops do) costs nothing more.
"""

from __future__ import annotations

from .._lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "save_quantized": ".single_file", "load_quantized": ".single_file", "read_header": ".single_file",
    "save_quantized_folder": ".folder", "load_quantized_folder": ".folder", "read_folder_header": ".folder",
    "folder_files": ".folder", "quantize_file": ".convert",
    "quantized_state_dict": ".state_dict", "flatten_state_dict": ".state_dict", "payload_nbytes": ".state_dict",
    "atomic_write": ".atomic",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
