"""The chain of an error, as a traceback shows it."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["innermost_cause"]


def innermost_cause(error: BaseException, wrappers: Sequence[str] = ()) -> BaseException:
    """The deepest error of ``error``'s chain whose message does not begin with one of ``wrappers``.

    The chain is the one a traceback prints: the explicit cause (``raise ... from``), else the error being
    handled when it was raised, unless that was suppressed (``from None``). Wrappers are errors that only
    restate another (MONAI's "Failed to evaluate", "applying transform"): the error beneath them is the one
    that says what is wrong. ``error`` itself when every error of the chain is a wrapper.
    """
    chain = [error]
    while (nxt := _next_in_chain(chain[-1])) is not None and nxt not in chain:
        chain.append(nxt)
    own = [e for e in chain if not str(e).startswith(tuple(wrappers))]
    return own[-1] if own else error


def _next_in_chain(error: BaseException) -> BaseException | None:
    if error.__cause__ is not None:
        return error.__cause__
    return None if error.__suppress_context__ else error.__context__
