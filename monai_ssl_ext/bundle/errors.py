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

__all__ = ["WRAPPER_MESSAGES", "innermost_cause", "report_root_cause_last"]

#: how monai.bundle wraps the real error of a config expression or component
WRAPPER_MESSAGES = ("Failed to evaluate", "Failed to instantiate", "Component to instantiate must represent")


def innermost_cause(error: BaseException) -> BaseException:
    """The first error of ``error``'s chain (``raise ... from``/during handling) that is not MONAI's wrapper."""
    chain = [error]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    own = [e for e in chain if not str(e).startswith(WRAPPER_MESSAGES)]
    return own[-1] if own else error


def _hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    sys.__excepthook__(kind, error, tb)
    cause = innermost_cause(error)
    if cause is not error or str(error).startswith(WRAPPER_MESSAGES):
        print(f"error: {type(cause).__name__}: {cause}", file=sys.stderr)


def report_root_cause_last() -> None:
    """Install the hook that ends a failed run's traceback with its root cause (idempotent)."""
    sys.excepthook = _hook
