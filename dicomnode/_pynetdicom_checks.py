"""Checks that pynetdicom's private internals are what our patches were written against.

:mod:`dicomnode._dul_tuning` and :mod:`dicomnode._reactor_fix` patch
pynetdicom 3.0.4 privately. Before patching, each lists its expectations
(``(text, probe)`` pairs: names, the shape of an idle ``Association``, the
source lines it relies on, behaviour on a socket pair); a patch whose
expectations are not all met is not applied, and :func:`refuse` logs which
differ, so another pynetdicom version falls back to its own code instead of
being patched blindly.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any

import pynetdicom
import pynetdicom.association as _association

Expectation = tuple[str, Callable[[], object]]
"""What pynetdicom must look like, and a probe that is truthy when it does."""


def pynetdicom_version() -> str:
    """The installed pynetdicom's version, for the log lines."""
    return str(getattr(pynetdicom, "__version__", "(unknown version)"))


def unmet(expectations: Iterable[Expectation]) -> list[str]:
    """The expectations whose probe is falsy or raises, as text for the log.

    A probe raising (a missing attribute, source that cannot be read, a probe
    socket that times out) counts as unmet: that is the change we look for.

    Parameters
    ----------
    expectations
        ``(text, probe)`` pairs; every probe runs, so the log names all that differ.

    Returns
    -------
    list of str
        The texts of the unmet ones (with the error, where a probe raised); empty
        when pynetdicom looks as expected.
    """
    failed = []
    for text, probe in expectations:
        try:
            holds = bool(probe())
        except Exception as exc:  # noqa: BLE001 - any error means the shape changed
            text = f"{text} ({type(exc).__name__}: {exc})"
            holds = False
        if not holds:
            failed.append(text)
    return failed


def refuse(logger: logging.Logger, patch: str, failed: list[str]) -> None:
    """Log on *logger* that *patch* stays out because of the *failed* expectations."""
    logger.warning(
        "pynetdicom %s: %s not applied, falling back to pynetdicom's own code; expected: %s",
        pynetdicom_version(),
        patch,
        "; ".join(failed),
    )


def report(logger: logging.Logger, applied: Iterable[str]) -> None:
    """Log on *logger* at INFO, in one line, the patches that went in."""
    names = list(applied)
    if names:
        logger.info("pynetdicom %s: %s applied", pynetdicom_version(), ", ".join(names))


def in_order(function: Any, *snippets: str) -> bool:
    """Whether *function*'s source contains *snippets*, each after the one before.

    Parameters
    ----------
    function
        A function or method whose source file is installed (a ``.py``, not only a ``.pyc``).
    *snippets
        Code fragments, exactly as pynetdicom 3.0.4 writes them.

    Returns
    -------
    bool
        True when all are found in that order. Raises ``OSError`` or ``TypeError``
        (unmet, for :func:`unmet`) when the source cannot be read.
    """
    source = inspect.getsource(function)
    position = 0
    for snippet in snippets:
        position = source.find(snippet, position)
        if position < 0:
            return False
        position += len(snippet)
    return True


def parameters(function: Any) -> list[str]:
    """*function*'s parameter names, not looking through ``__wrapped__``."""
    return list(inspect.signature(function, follow_wrapped=False).parameters)


def own(function: Any) -> bool:
    """Whether *function* is not already a wrapper (ours or anyone's)."""
    return not hasattr(function, "__wrapped__")


def probe_association() -> _association.Association:
    """An idle requestor ``Association``, never started, to look at its attributes.

    Its shape is only set up in ``__init__``, so this is the one way to see it
    without a peer; building one costs well under a millisecond and no socket.
    """
    return _association.Association(pynetdicom.AE(), "requestor")
