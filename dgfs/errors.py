"""One place that maps core errors to errnos, and the guard every FUSE handler runs under."""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import time

import pyfuse3

from core import errors as core_errors
from core.cache import CacheError
from dgfs import opstats

log = logging.getLogger("dgfs.fs")

ERRNO_OF: dict[type[Exception], int] = {
    core_errors.NotFound: errno.ENOENT,
    core_errors.BucketNotFound: errno.EIO,
    core_errors.AccessDenied: errno.EACCES,
    core_errors.EndpointError: errno.EIO,
    core_errors.PreconditionFailed: errno.EEXIST,
    core_errors.Stale: errno.ESTALE,
    core_errors.IntegrityError: errno.EIO,
    core_errors.CodecError: errno.EIO,
    core_errors.InvalidName: errno.EINVAL,
    core_errors.MetadataTooLarge: errno.E2BIG,
    core_errors.NoSpace: errno.ENOSPC,
    CacheError: errno.EIO,
}


class ErrnoError(Exception):
    """A failure already logged where it happened, reported to the caller as `errno`."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(code, str(code)))
        self.errno = code


def errno_for(exc: BaseException) -> int:
    """The errno a FUSE caller sees for an exception."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    for cls in type(exc).__mro__:
        if cls in ERRNO_OF:
            return ERRNO_OF[cls]
    return errno.EIO


def guarded(fn):
    """Turn any exception of a handler into FUSEError(errno), logging real failures once;
    every call's latency and outcome go to opstats (the FUSE operation metrics)."""
    op = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        start = time.perf_counter()
        failed = True
        try:
            result = await fn(*args, **kwargs)
            failed = False
            return result
        except pyfuse3.FUSEError:
            raise
        except ErrnoError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except core_errors.NotFound:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except (core_errors.DgError, CacheError, OSError) as exc:
            code = errno_for(exc)
            log.warning("%s: %s (%s)", op, exc, errno.errorcode.get(code, code))
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            log.exception("%s: unexpected error", op)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            opstats.record(op, time.perf_counter() - start, failed)

    return wrapper


def guard_all(cls):
    """Class decorator: guard every coroutine method that pyfuse3 calls."""
    for name, member in list(vars(cls).items()):
        if inspect.iscoroutinefunction(member) and not name.startswith("_"):
            setattr(cls, name, guarded(member))
    return cls
