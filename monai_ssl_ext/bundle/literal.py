"""Strings from data kept literal in a MONAI bundle configuration.

MONAI reads a config string that begins with ``$`` as Python to evaluate, ``@`` as a reference and ``%`` as
a macro. A path, a manifest's class name or a DICOM tag may begin with any of them, so a string from data
that ends up in a configuration (an override on the command line, a setting written into an exported config)
is passed through :func:`inert` first: it then reads back as the same string and nothing is run.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DATA_SETTINGS", "inert"]

#: settings whose values are data (paths, names), never expressions: their overrides are always made inert
DATA_SETTINGS = frozenset(
    {
        "datalist",
        "data_root",
        "classes",
        "ckpt_dir",
        "output_dir",
        "eval_output_dir",
        "input_dir",
        "checkpoint",
        "resume_from",
        "pretrained_weights",
    }
)

_MONAI_PREFIXES = ("$", "@", "%")


def inert(value: Any) -> Any:
    """``value`` with every string MONAI would read as an expression, reference or macro made literal.

    Such a string becomes an expression that rebuilds it from hexadecimal digits, which contain none of
    MONAI's reference characters; dictionaries and lists are walked, anything else is returned as it is.
    """
    if isinstance(value, dict):
        return {k: inert(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(inert(v) for v in value)
    if isinstance(value, str) and value.startswith(_MONAI_PREFIXES):
        return f"$bytes.fromhex('{value.encode('utf-8').hex()}').decode('utf-8')"
    return value
