"""One exception hierarchy for rasterduck.

Every error that concerns a file names its URL; errors raised while reading a record also name the
record id and the band, so a failure inside a 100k-row SQL query points at the scene that caused it.
"""

from __future__ import annotations


class RasterduckError(Exception):
    """Base class of every error rasterduck raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        record_id: str | None = None,
        band: str | None = None,
    ) -> None:
        self.message = message
        self.url = url
        self.record_id = record_id
        self.band = band
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.record_id is not None:
            where.append(f"record {self.record_id!r}")
        if self.band is not None:
            where.append(f"band {self.band!r}")
        if self.url is not None:
            where.append(f"url {self.url}")
        return f"{self.message} [{', '.join(where)}]" if where else self.message

    def with_context(
        self, *, url: str | None = None, record_id: str | None = None, band: str | None = None
    ) -> RasterduckError:
        """Fill in context that was unknown where the error was raised; return self."""
        if url is not None and self.url is None:
            self.url = url
        if record_id is not None and self.record_id is None:
            self.record_id = record_id
        if band is not None and self.band is None:
            self.band = band
        self.args = (self._render(),)
        return self


class TiffFormatError(RasterduckError, ValueError):
    """The bytes are not a TIFF we can trust: truncated, garbage, cycles, absurd counts."""


class UnsupportedTiffError(RasterduckError, NotImplementedError):
    """A valid TIFF that uses a feature rasterduck does not read (e.g. rotated georeferencing)."""


class DecodeError(RasterduckError, ValueError):
    """A tile could not be decoded: corrupt stream, wrong size, unsupported codec or predictor."""


class TruncatedTileError(DecodeError):
    """The stored bytes end before the rows asked for: a short file, or a prefix fetched too short."""


class FetchError(RasterduckError, OSError):
    """Bytes could not be fetched: HTTP status, bad Range answer, timeout, retries exhausted."""

    def __init__(self, message: str, *, status: int | None = None, transient: bool = False, **kw: str | None) -> None:
        self.status = status
        self.transient = transient
        super().__init__(message, **kw)


class AccessDeniedError(FetchError):
    """The href is not allowed by the access policy (local paths, schemes, redirects)."""


class BandNotFoundError(RasterduckError, KeyError):
    """A requested band code is not in the record's assets or has no metadata."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class GeometryError(RasterduckError, ValueError):
    """An AOI could not be used: malformed WKB, empty, wrong CRS, unsupported type."""


class CollectionError(RasterduckError, ValueError):
    """A collection table is missing columns or has the wrong types."""


class PixelBudgetExceeded(RasterduckError, MemoryError):
    """A call would materialise more pixels than the configured budget allows."""
