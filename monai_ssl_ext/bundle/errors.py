"""The one line a user needs when a bundle workflow fails: the original error, last.

``monai.bundle`` wraps an error raised inside a config expression (a missing file, an impossible label
budget) in ``RuntimeError: Failed to evaluate ...``, so the last line of a failed run names MONAI's
wrapper, not the problem. :func:`report_root_cause_last` (the first item of every workflow's
``initialize``) keeps Python's traceback as it is and adds one line after it: the innermost error of the
chain that is not such a wrapper, with the file and the problem.
"""

from __future__ import annotations

import sys
from types import TracebackType

from monai_ssl_ext.utils.errors import innermost_cause

__all__ = ["WRAPPER_MESSAGES", "report_root_cause_last"]

#: how monai.bundle wraps the real error of a config expression or component
WRAPPER_MESSAGES = ("Failed to evaluate", "Failed to instantiate", "Component to instantiate must represent")


def _hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    sys.__excepthook__(kind, error, tb)
    cause = innermost_cause(error, WRAPPER_MESSAGES)
    if cause is not error or str(error).startswith(WRAPPER_MESSAGES):
        print(f"error: {type(cause).__name__}: {cause}", file=sys.stderr)


def report_root_cause_last() -> None:
    """Install the hook that ends a failed run's traceback with its root cause (idempotent)."""
    sys.excepthook = _hook
