"""Which hrefs rasterduck may open: URL schemes and local folders.

A collection received from someone else is untrusted input: its hrefs could name ``/etc/shadow`` or
``file:///home/you/.ssh/id_rsa``. The default policy therefore allows remote schemes only; local access
needs ``allow_local=True`` (trust every path) or a list of root folders. Paths are resolved (``..`` and
symlinks) before the root check, so neither can escape an allowed root.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from rasterduck.errors import AccessDeniedError

REMOTE_SCHEMES = ("http", "https", "s3")


def url_scheme(url: str) -> str:
    """The lower-case scheme of an href; ``""`` for a plain local path (also Windows ``C:\\...``)."""
    if len(url) >= 2 and url[1] == ":" and url[0].isalpha():
        return ""  # a drive letter, not a scheme
    head, sep, _ = url.partition("://")
    if not sep or not head or not all(c.isalnum() or c in "+-." for c in head):
        return ""
    return head.lower()


def local_path(url: str) -> Path:
    """The filesystem path named by a plain path or a ``file://`` URL (host must be empty or localhost)."""
    if url_scheme(url) != "file":
        return Path(url).expanduser()
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise AccessDeniedError(f"file URL with remote host {parts.netloc!r} is not supported", url=url)
    return Path(url2pathname(parts.path))


class AccessPolicy:
    """Decide whether an href may be read: scheme allow-list plus local roots."""

    def __init__(
        self,
        allow_local: bool | Sequence[str | os.PathLike[str]] = False,
        allowed_schemes: Iterable[str] = REMOTE_SCHEMES,
    ) -> None:
        self.allowed_schemes = frozenset(s.lower() for s in allowed_schemes)
        if isinstance(allow_local, bool):
            self.allow_any_local = allow_local
            self.local_roots: tuple[Path, ...] = ()
        else:
            if isinstance(allow_local, str | os.PathLike):
                allow_local = [allow_local]
            self.allow_any_local = False
            self.local_roots = tuple(Path(r).expanduser().resolve() for r in allow_local)

    def __repr__(self) -> str:
        local: object = True if self.allow_any_local else [str(r) for r in self.local_roots]
        return f"AccessPolicy(allow_local={local!r}, allowed_schemes={sorted(self.allowed_schemes)!r})"

    @property
    def allows_local(self) -> bool:
        """Whether any local path can be allowed at all."""
        return self.allow_any_local or bool(self.local_roots)

    def check_remote(self, url: str) -> str:
        """Return the scheme of a remote URL, raising AccessDeniedError when it is not allowed."""
        scheme = url_scheme(url)
        if scheme not in self.allowed_schemes:
            raise AccessDeniedError(f"URL scheme {scheme or 'local path'!r} is not allowed by the access policy",
                                    url=url)
        return scheme

    def resolve_local(self, url: str) -> Path:
        """Resolve a local path or file:// URL and check it lies under an allowed root; return the real path."""
        if not self.allows_local:
            raise AccessDeniedError(
                "local file access is not allowed by the access policy "
                "(pass allow_local=True or a list of allowed root folders)", url=url)
        path = local_path(url)
        try:
            real = path.resolve(strict=False)
        except (OSError, RuntimeError) as exc:  # symlink loops
            raise AccessDeniedError(f"cannot resolve local path: {exc}", url=url) from exc
        if self.allow_any_local:
            return real
        for root in self.local_roots:
            if real.is_relative_to(root):
                return real
        raise AccessDeniedError("local path is outside the allowed roots "
                                f"{[str(r) for r in self.local_roots]}", url=url)
