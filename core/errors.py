"""The error hierarchy of core; dgfs maps these to errnos and one-line messages in one place."""

from __future__ import annotations


class DgError(Exception):
    """Base of every error core raises on purpose."""


class NotFound(DgError):
    """The object (or logical file) does not exist."""


class BucketNotFound(DgError):
    """The bucket does not exist."""


class AccessDenied(DgError):
    """Credentials are missing, wrong or lack permission."""


class EndpointError(DgError):
    """The S3 endpoint cannot be reached or keeps failing (network, timeouts, 5xx)."""


class PreconditionFailed(DgError):
    """A conditional request lost (the object exists, or changed since it was read)."""


class Stale(DgError):
    """An object kept changing under an operation that depends on what was read of it."""


class IntegrityError(DgError):
    """Stored bytes do not match their recorded SHA-256 (names the key)."""


class CodecError(DgError):
    """xdelta3 failed or is missing."""


class InvalidName(DgError):
    """A logical name that dgfs refuses to store (reserved or not representable)."""


class MetadataTooLarge(DgError):
    """User metadata would exceed S3's 2 KiB limit."""


class NoSpace(DgError):
    """Local staging or cache space ran out."""


class ArchiveError(DgError):
    """An archive canonical form is malformed, or cannot be rebuilt on this machine."""
