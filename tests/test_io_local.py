"""LocalBackend and AccessPolicy on real files: positional reads, roots, traversal, symlinks, file:// URLs."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import _paths
import pytest

from rasterduck.errors import AccessDeniedError, FetchError
from rasterduck.io import AccessPolicy, DefaultBackend, LocalBackend, run_sync
from rasterduck.io.policy import local_path, url_scheme

REL = "geotiff/gdal/utmsmall.tif"


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """allowed/ with a data file and links; outside/ with a secret."""
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    data = random.Random(2).randbytes(300_000)
    (allowed / "data.bin").write_bytes(data)
    (outside / "secret.bin").write_bytes(b"secret" * 100)
    (allowed / "escape.bin").symlink_to(outside / "secret.bin")
    (allowed / "inner.bin").symlink_to(allowed / "data.bin")
    (allowed / "sub").mkdir()
    return {"root": tmp_path, "allowed": allowed, "outside": outside}


def read(backend: object, url: str, ranges: list[tuple[int, int]]) -> list[bytes]:
    return run_sync(backend.read_ranges(url, ranges), timeout=30)  # type: ignore[attr-defined]


def test_positional_reads_match_the_file() -> None:
    path = _paths.testdata_dir() / REL
    data = path.read_bytes()
    rng = random.Random(9)
    ranges = [(rng.randrange(len(data) - 3000), rng.randrange(0, 3000)) for _ in range(80)] + [(0, len(data))]
    backend = LocalBackend(AccessPolicy(allow_local=[_paths.testdata_dir()]), max_gap=0)
    try:
        assert read(backend, str(path), ranges) == [data[s:s + n] for s, n in ranges]
        assert read(backend, path.as_uri(), [(4, 8)]) == [data[4:12]]
    finally:
        run_sync(backend.close())


def test_default_policy_denies_local_files(tree: dict[str, Path]) -> None:
    path = tree["allowed"] / "data.bin"
    backend = DefaultBackend()
    for url in (str(path), path.as_uri(), "relative/file.tif"):
        with pytest.raises(AccessDeniedError, match="not allowed"):
            read(backend, url, [(0, 10)])
    run_sync(backend.close())


def test_allowed_root(tree: dict[str, Path]) -> None:
    data = (tree["allowed"] / "data.bin").read_bytes()
    backend = DefaultBackend(AccessPolicy(allow_local=[tree["allowed"]]))
    try:
        assert read(backend, str(tree["allowed"] / "data.bin"), [(100, 50)]) == [data[100:150]]
        assert read(backend, (tree["allowed"] / "data.bin").as_uri(), [(0, 3)]) == [data[:3]]
        # a symlink that stays inside the root is fine
        assert read(backend, str(tree["allowed"] / "inner.bin"), [(7, 7)]) == [data[7:14]]
        with pytest.raises(AccessDeniedError, match="outside the allowed roots"):
            read(backend, str(tree["outside"] / "secret.bin"), [(0, 6)])
    finally:
        run_sync(backend.close())


@pytest.mark.parametrize(
    "href",
    ["allowed/../outside/secret.bin", "allowed/sub/../../outside/secret.bin", "allowed/escape.bin"],
)
def test_traversal_and_escaping_symlinks_denied(tree: dict[str, Path], href: str) -> None:
    policy = AccessPolicy(allow_local=[tree["allowed"]])
    target = f"{tree['root']}/{href}"
    with pytest.raises(AccessDeniedError):
        policy.resolve_local(target)
    with pytest.raises(AccessDeniedError):
        policy.resolve_local("file://" + target)
    backend = LocalBackend(policy)
    with pytest.raises(AccessDeniedError):
        read(backend, target, [(0, 6)])


def test_allow_any_local(tree: dict[str, Path]) -> None:
    policy = AccessPolicy(allow_local=True)
    assert policy.resolve_local(str(tree["allowed"] / "escape.bin")) == (tree["outside"] / "secret.bin").resolve()


def test_file_urls_with_a_remote_host_are_refused() -> None:
    with pytest.raises(AccessDeniedError, match="remote host"):
        AccessPolicy(allow_local=True).resolve_local("file://evil.example/etc/passwd")


@pytest.mark.parametrize(
    ("url", "scheme"),
    [("/a/b.tif", ""), ("b.tif", ""), ("C:\\data\\b.tif", ""), ("file:///a", "file"), ("HTTPS://x/y", "https"),
     ("s3://b/k", "s3"), ("weird scheme://x", "")],
)
def test_url_scheme(url: str, scheme: str) -> None:
    assert url_scheme(url) == scheme


def test_local_path_decodes_file_urls() -> None:
    assert local_path("file:///tmp/a%20b.tif") == Path("/tmp/a b.tif")
    assert local_path("file://localhost/tmp/x.tif") == Path("/tmp/x.tif")


def test_read_past_end_and_missing_files(tree: dict[str, Path]) -> None:
    backend = LocalBackend(AccessPolicy(allow_local=[tree["allowed"]]))
    path = str(tree["allowed"] / "data.bin")
    with pytest.raises(FetchError, match="past the end") as info:
        read(backend, path, [(299_990, 100)])
    assert path in str(info.value)
    with pytest.raises(FetchError, match="cannot open"):
        read(backend, str(tree["allowed"] / "missing.bin"), [(0, 1)])
    with pytest.raises(FetchError, match="cannot open"):
        read(backend, str(tree["allowed"] / "sub"), [(0, 1)])  # a directory


def test_fifo_does_not_block(tree: dict[str, Path]) -> None:
    fifo = tree["allowed"] / "pipe"
    os.mkfifo(fifo)
    backend = LocalBackend(AccessPolicy(allow_local=[tree["allowed"]]))
    with pytest.raises(FetchError, match="not a regular file"):
        read(backend, str(fifo), [(0, 1)])


def open_files_under(folder: Path) -> list[str]:
    """Paths under ``folder`` that this process holds open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


def test_local_reads_close_their_fds(tree: dict[str, Path]) -> None:
    backend = LocalBackend(AccessPolicy(allow_local=[tree["allowed"]]), max_gap=0)
    path = str(tree["allowed"] / "data.bin")
    for _ in range(20):
        read(backend, path, [(k * 1000, 10) for k in range(50)])
    with pytest.raises(FetchError):
        read(backend, path, [(0, 10), (299_999, 10)])
    deadline = time.monotonic() + 5
    while open_files_under(tree["allowed"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert open_files_under(tree["allowed"]) == []
    run_sync(backend.close())
