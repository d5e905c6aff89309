"""Local file range reads: positional reads (``os.pread``) in a thread pool, behind the access policy.

Plain paths and ``file://`` URLs are accepted. The file is opened once per ``read_ranges`` call and only
if it is a regular file (a FIFO or device could block or never end); merged ranges are read in parallel.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from rasterduck.errors import FetchError
from rasterduck.io.backend import CoalescingBackend, gather_fail_fast
from rasterduck.io.policy import AccessPolicy
from rasterduck.io.ranges import MergedRange

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def _open_regular(path: str) -> int:
    """Open a regular file for reading (non-blocking open so a FIFO cannot hang us); return the fd."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(0, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


_seek_lock = threading.Lock()


def _pread(fd: int, start: int, length: int) -> bytes:
    """Read exactly ``length`` bytes at ``start``; fewer only at end of file."""
    parts: list[bytes] = []
    got = 0
    while got < length:
        if hasattr(os, "pread"):
            chunk = os.pread(fd, length - got, start + got)
        else:  # pragma: no cover - Windows has no pread
            with _seek_lock:
                os.lseek(fd, start + got, os.SEEK_SET)
                chunk = os.read(fd, length - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _FdGuard:
    """Close an fd only after every read submitted on it has finished, even when the caller was cancelled.

    Closing early would let the number be reused by another open while a thread still preads it.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._users = 1  # the owner
        self._lock = threading.Lock()

    def submit(self, pool: ThreadPoolExecutor, start: int, length: int) -> Future[bytes]:
        """Run one pread in the pool, holding the fd open until it ends."""
        with self._lock:
            self._users += 1
        try:
            fut = pool.submit(_pread, self.fd, start, length)
        except BaseException:
            self.release()
            raise
        fut.add_done_callback(lambda _: self.release())
        return fut

    def release(self) -> None:
        """Drop one user; the last one closes the fd."""
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            os.close(self.fd)


class LocalBackend(CoalescingBackend):
    """Positional reads of local files in a thread pool; paths are checked by the AccessPolicy first."""

    def __init__(self, policy: AccessPolicy | None = None, *, max_workers: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy if policy is not None else AccessPolicy()
        self.max_workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.max_workers, thread_name_prefix="rasterduck-local")
            return self._executor

    def _prepare(self, url: str) -> str:
        """Resolve the path and check it against the policy; the real path is what gets opened."""
        return str(self.policy.resolve_local(url))

    async def _open(self, url: str, target: str) -> tuple[ThreadPoolExecutor, _FdGuard]:
        """Open ``target`` in the reader pool; the guard closes it after the last read."""
        pool = self._pool()
        try:
            fd = await asyncio.get_running_loop().run_in_executor(pool, _open_regular, target)
        except OSError as exc:
            raise FetchError(f"cannot open local file: {exc.strerror or exc}", url=url) from exc
        return pool, _FdGuard(fd)

    async def read_upto(self, url: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``start``; shorter only where the file ends (speculative header reads)."""
        pool, guard = await self._open(url, self._prepare(url))
        try:
            async with self.limiter:
                data = await asyncio.wrap_future(guard.submit(pool, start, length))
        except OSError as exc:
            raise FetchError(f"local read failed: {exc.strerror or exc}", url=url) from exc
        finally:
            guard.release()
        self.stats.add(calls=1, ranges=1, merged=1, requests=1, bytes=len(data))
        return data

    async def _read_merged(self, url: str, target: str, merged: list[MergedRange]) -> list[bytes]:
        """Open the file once, then pread every merged range concurrently under the shared limit."""
        pool, guard = await self._open(url, target)

        async def one(m: MergedRange) -> bytes:
            async with self.limiter:
                data = await asyncio.wrap_future(guard.submit(pool, m.start, m.length))
            self.stats.add(requests=1, bytes=len(data))
            if len(data) != m.length:
                raise FetchError(f"bytes {m.start}-{m.end - 1} run past the end of the file "
                                 f"({m.start + len(data)} bytes available there)", url=url)
            return data

        try:
            return await gather_fail_fast([one(m) for m in merged])
        except OSError as exc:
            if isinstance(exc, FetchError):
                raise
            raise FetchError(f"local read failed: {exc.strerror or exc}", url=url) from exc
        finally:
            guard.release()

    async def fetch(self, url: str, start: int, length: int) -> bytes:
        """One range of an allowed local file."""
        return bytes((await self.read_ranges(url, [(start, length)]))[0])  # one range: already bytes, no copy

    async def close(self) -> None:
        """Stop the reader threads (a new pool is made if the backend is used again)."""
        with self._lock:
            pool, self._executor = self._executor, None
        if pool is not None:
            pool.shutdown(wait=False)
