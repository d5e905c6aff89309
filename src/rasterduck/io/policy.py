"""Which hrefs rasterduck may open: URL schemes, local folders and network addresses.

A collection received from someone else is untrusted input: its hrefs could name ``/etc/shadow`` or
``file:///home/you/.ssh/id_rsa``. The default policy therefore allows remote schemes only; local access
needs ``allow_local=True`` (trust every path) or a list of root folders. Paths are resolved (``..`` and
symlinks) before the root check, so neither can escape an allowed root.

Hrefs (and redirects) could also point into the reader's own network: a cloud metadata service
(``169.254.169.254``), a private network (``10/8``, ``192.168/16``, ``fc00::/7``, ...). By default
(``block_private=True``) only globally routable addresses and loopback are reachable: IP literals are
refused before any connection, host names are resolved first and refused when every address they
resolve to is blocked (the connection then goes to an address that passed the check). Loopback stays
allowed (``allow_loopback=True``) so local servers and tests work; a service that reads collections for
other people should pass ``allow_loopback=False``. ``allowed_networks`` re-opens given networks (e.g. a
MinIO at ``10.0.0.5/32``); ``block_private=False`` turns the address check off.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from rasterduck.errors import AccessDeniedError

REMOTE_SCHEMES = ("http", "https", "s3")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_V4 = frozenset("0123456789abcdefxABCDEFX.")


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


def url_host(url: str) -> str | None:
    """The host of a URL without brackets or IPv6 zone (lower case), or None when it has none."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    return host.split("%", 1)[0].rstrip(".").lower()


def numeric_address(host: str) -> IPAddress | None:
    """The address a host string denotes by itself, without DNS: IPv4/IPv6 literals and the legacy IPv4
    forms the C library also accepts (``2852039166``, ``0xa9.254.169.254``, ``127.1``); else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and set(host) <= _NUMERIC_V4 and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address carried inside an IPv4-mapped, NAT64 or 6to4 IPv6 address."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


class AccessPolicy:
    """Decide whether an href may be read: scheme allow-list, local roots and network addresses."""

    def __init__(
        self,
        allow_local: bool | Sequence[str | os.PathLike[str]] = False,
        allowed_schemes: Iterable[str] = REMOTE_SCHEMES,
        *,
        block_private: bool = True,
        allow_loopback: bool = True,
        allowed_networks: Iterable[str] = (),
    ) -> None:
        self.allowed_schemes = frozenset(s.lower() for s in allowed_schemes)
        self.block_private = block_private
        self.allow_loopback = allow_loopback
        self.allowed_networks = tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks)
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
        nets = [str(n) for n in self.allowed_networks]
        return (f"AccessPolicy(allow_local={local!r}, allowed_schemes={sorted(self.allowed_schemes)!r}, "
                f"block_private={self.block_private}, allow_loopback={self.allow_loopback}, "
                f"allowed_networks={nets!r})")

    @property
    def checks_addresses(self) -> bool:
        """Whether some network addresses are refused (host names must then be resolved and checked)."""
        return self.block_private or not self.allow_loopback

    @property
    def allows_local(self) -> bool:
        """Whether any local path can be allowed at all."""
        return self.allow_any_local or bool(self.local_roots)

    def check_remote(self, url: str) -> str:
        """Return the scheme of a remote URL, raising AccessDeniedError when it is not allowed.

        A host given as an address (literal or legacy numeric form) is checked here, before any I/O;
        host names are checked after resolution (see ``blocked_reason``)."""
        scheme = url_scheme(url)
        if scheme not in self.allowed_schemes:
            raise AccessDeniedError(f"URL scheme {scheme or 'local path'!r} is not allowed by the access policy",
                                    url=url)
        if scheme in ("http", "https") and self.checks_addresses:
            host = url_host(url)
            ip = numeric_address(host) if host else None
            if ip is not None:
                self.check_address(ip, url=url)
        return scheme

    def blocked_reason(self, ip: IPAddress) -> str | None:
        """Why connecting to ``ip`` is refused (e.g. "link-local address"), or None when it is allowed."""
        if any(ip in net for net in self.allowed_networks if net.version == ip.version):
            return None
        inner = _embedded_v4(ip)
        if inner is not None:
            why = self.blocked_reason(inner)
            return f"{why} (it carries {inner})" if why else None
        if ip.is_loopback:
            return None if self.allow_loopback else "loopback address"
        if not self.block_private:
            return None
        if ip.is_unspecified:
            return "unspecified address"
        if ip.is_link_local:
            return "link-local address (where cloud metadata services live)"
        if ip.is_multicast:
            return "multicast address"
        if ip.is_private:
            return "private network address"
        if not ip.is_global:
            return "address that is not globally routable"
        return None

    def check_address(self, ip: IPAddress, *, url: str | None = None, host: str | None = None) -> None:
        """Raise AccessDeniedError when the policy refuses connections to ``ip``."""
        why = self.blocked_reason(ip)
        if why is None:
            return
        named = f"{host} resolves to {ip}" if host and host != str(ip) else str(ip)
        fix = ("allow_loopback=True" if why == "loopback address"
               else "allowed_networks=[...] or block_private=False")
        raise AccessDeniedError(f"blocked by the access policy: {named} is a {why} (to reach it, pass "
                                f"AccessPolicy({fix}))", url=url)

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
