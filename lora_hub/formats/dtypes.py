"""The one table of dtypes: safetensors names (``BF16``), the names configs and users write
(``bfloat16``), and torch dtypes (looked up lazily: planning a merge needs no torch).

Only the floating-point dtypes can be merged into or written by a merge; the integer ones are
read and copied as they are (``position_ids``, quantization tables).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: bytes per element of every dtype the strict reader accepts
ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
#: safetensors name -> the name configs, ``--dtype`` and PEFT use
NAME: dict[str, str] = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
#: ``--dtype`` name -> safetensors name
BY_NAME: dict[str, str] = {v: k for k, v in NAME.items()}
#: unit roundoff ``u`` (half the machine epsilon) of each float dtype
UNIT_ROUNDOFF: dict[str, float] = {"F64": 2.0**-53, "F32": 2.0**-24, "F16": 2.0**-11, "BF16": 2.0**-8}

_TORCH_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}  # fmt: skip


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors name (``BF16``) or a user-facing name (``bfloat16``)."""
    import torch

    return getattr(torch, _TORCH_NAMES.get(name, name))
