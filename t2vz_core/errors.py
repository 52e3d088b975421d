"""Error types shared by the library, and the one rule that decides what is worth a retry."""

from __future__ import annotations

import errno


class T2VZError(Exception):
    """Base class of every error t2vz raises on purpose."""


class InputError(T2VZError, ValueError):
    """Bad parameters or a bad manifest cell: permanent, never retried."""


class MediaError(T2VZError):
    """A file that cannot be used as media (corrupt, truncated, no video...): permanent."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class TransientError(T2VZError):
    """A failure that may well go away on a second try (I/O timeout, a hung decoder)."""


_TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.EBUSY, errno.EINTR}


def is_out_of_memory(exc: BaseException) -> bool:
    """True for accelerator out-of-memory errors (CUDA or MPS), whatever class raised them."""
    name = type(exc).__name__
    return name == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def is_network_error(exc: BaseException) -> bool:
    """A timeout or failed connection anywhere in the exception's chain (hub downloads wrap them)."""
    seen = exc
    while seen is not None:
        name = type(seen).__name__
        if isinstance(seen, TimeoutError) or "Timeout" in name or name in {"ConnectError", "ConnectionError"}:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: timeouts, flaky I/O and out-of-memory; never bad input or bad media."""
    if isinstance(exc, (InputError, MediaError)):
        return False
    if isinstance(exc, (TransientError, TimeoutError)) or is_out_of_memory(exc):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS
