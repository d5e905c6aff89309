"""Untrusted collections: hrefs (and the redirects they lead to) are input from someone else.

By default a read may not open local files (plain paths, file:// URLs), may not follow a redirect to
another scheme or more than five times, may not connect to private, link-local (cloud metadata) and
other non-global addresses, and verifies TLS certificates. With allowed roots, `..` and symlinks cannot
leave them. Every refusal is an AccessDeniedError (or FetchError) naming record, band and URL, raised
before any byte of the refused target is read. No test sends a packet beyond 127.0.0.1: refused
addresses are refused before a connection is attempted (the backend counts zero requests).
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

import rasterduck
from rasterduck.errors import AccessDeniedError, FetchError
from rasterduck.io import AccessPolicy, DefaultBackend, HttpOptions, run_sync

from .httpserver import RangeServer
from .test_faults_helpers import FAST, assert_matches_rasterio, build, random_aois, write_cog

pytestmark = pytest.mark.timeout(60)


class Tree:
    """root/cog.tif (allowed), outside/secret.tif (not), root/link.tif -> outside/secret.tif, a server over
    root, and a one-record collection over the served file."""

    def __init__(self, base: Path, server: RangeServer) -> None:
        self.root, self.outside = base / "root", base / "outside"
        self.cog = self.root / "cog.tif"
        self.secret = self.outside / "secret.tif"
        shutil.copy(self.cog, self.secret)
        (self.root / "link.tif").symlink_to(self.secret)
        (self.root / "sub").mkdir()
        self.server = server
        self.url = server.url("cog.tif")
        self.collection = build([self.url], ["rec-0"])
        self.aois = random_aois(3, seed=2)

    def pointing_at(self, href: str) -> rasterduck.Collection:
        """The collection with its one href replaced."""
        return self.collection.rewrite_hrefs({self.url: href})


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    base = tmp_path_factory.mktemp("untrusted")
    (base / "root").mkdir()
    (base / "outside").mkdir()
    write_cog(base / "root" / "cog.tif")
    with RangeServer(base / "root") as srv:
        yield Tree(base, srv)


@pytest.fixture
def srv(tree: Tree) -> Iterator[RangeServer]:
    tree.server.wait_idle()
    tree.server.reset()
    yield tree.server
    tree.server.reset()


@pytest.fixture
def backends() -> Iterator[Any]:
    made: list[DefaultBackend] = []

    def make(policy: AccessPolicy | None = None, http: HttpOptions = FAST) -> DefaultBackend:
        made.append(DefaultBackend(policy=policy, http=http))
        return made[-1]

    yield make
    for b in made:
        run_sync(b.close())


def _denied(c: rasterduck.Collection, aois: Any, backend: Any = None, match: str = "") -> AccessDeniedError:
    with pytest.raises(AccessDeniedError, match=match) as info:
        c.read(aois, ["b1"], backend=backend)
    err = info.value
    assert (err.record_id, err.band) == ("rec-0", "b1")
    return err


# ------------------------------------------------------------------------------------------ local files
@pytest.mark.parametrize("form", ["path", "file-url", "file-url-localhost", "home-relative"])
def test_local_hrefs_are_denied_by_default(tree: Tree, form: str) -> None:
    href = {"path": str(tree.cog), "file-url": tree.cog.as_uri(),
            "file-url-localhost": "file://localhost" + str(tree.cog), "home-relative": "~/.ssh/id_rsa"}[form]
    # no backend given: the process-wide default, which is what a user of a received collection gets
    err = _denied(tree.pointing_at(href), tree.aois, match="local file access is not allowed")
    assert err.url == href


def test_file_url_with_a_remote_host_is_denied(tree: Tree, backends: Any) -> None:
    backend = backends(AccessPolicy(allow_local=True))
    _denied(tree.pointing_at("file://fileserver/share/x.tif"), tree.aois, backend, match="remote host")


def test_allowed_root_reads_inside_and_nothing_outside(tree: Tree, backends: Any) -> None:
    backend = backends(AccessPolicy(allow_local=[str(tree.root)]))
    inside = [str(tree.cog), tree.cog.as_uri(), str(tree.root / "sub" / ".." / "cog.tif")]
    for href in inside:
        out = tree.pointing_at(href).read(tree.aois, ["b1"], backend=backend)
        assert_matches_rasterio(out, tree.cog, tree.aois)
    escapes = {
        "dot-dot": str(tree.root / ".." / "outside" / "secret.tif"),
        "dot-dot-file-url": "file://" + str(tree.root) + "/../outside/secret.tif",
        "symlink-out": str(tree.root / "link.tif"),
        "absolute-outside": str(tree.secret),
        "root-prefix-sibling": str(tree.root) + "-evil/cog.tif",  # /x/root-evil is not under /x/root
    }
    for name, href in escapes.items():
        err = _denied(tree.pointing_at(href), tree.aois, backend, match="outside the allowed roots")
        assert err.url == href, name


def test_a_shipped_collection_cannot_reach_beside_its_folder(tree: Tree, tmp_path: Path) -> None:
    """A collection folder whose second record says `../outside/secret.tif`: attached with
    allow_local=True (its own folder), the first record reads and the second is refused."""
    folder = tmp_path / "shipped"
    folder.mkdir()
    shutil.copy(tree.cog, folder / "cog.tif")
    (tmp_path / "outside").mkdir()
    shutil.copy(tree.cog, tmp_path / "outside" / "secret.tif")
    built = rasterduck.build_collection([str(folder / "cog.tif")] * 2, ids=["rec-0", "rec-1"], bands=["b1"])
    t = built.to_arrow()  # a build from local paths may read exactly their folders
    rows = t.to_pylist()
    rows[0]["assets"]["b1"]["href"] = "cog.tif"
    rows[1]["assets"]["b1"]["href"] = "../outside/secret.tif"
    pq.write_table(type(t).from_pylist(rows, schema=t.schema), folder / "collection.parquet")
    # Python: the collection's folder as the allowed root
    c = rasterduck.open_collection(folder / "collection.parquet")
    backend = DefaultBackend(AccessPolicy(allow_local=[str(folder)]))
    try:
        out = c.read(tree.aois, ["b1"], backend=backend, raise_errors=False)
    finally:
        run_sync(backend.close())
    good = [r for r in out if not isinstance(r, BaseException)]
    bad = [r for r in out if isinstance(r, BaseException)]
    assert {r.record_id for r in good} == {"rec-0"} and len(good) == len(tree.aois)
    assert bad and all(isinstance(e, AccessDeniedError) and e.record_id == "rec-1" for e in bad)
    # SQL: attach(allow_local=True) trusts the collection's folder and nothing else
    con = rasterduck.connect()
    try:
        rasterduck.attach(con, "shipped", folder / "collection.parquet", allow_local=True)
        aoi = tree.aois[0].wkb_hex
        rows = con.execute(f"SELECT id, load_bands_safe(r, from_hex('{aoi}'), ['b1']) FROM shipped r "
                           "ORDER BY id").fetchall()
        assert rows[0][1]["error"] is None
        assert "AccessDeniedError" in rows[1][1]["error"] and "outside the allowed roots" in rows[1][1]["error"]
        assert "record 'rec-1'" in rows[1][1]["error"]
    finally:
        con.close()


# ------------------------------------------------------------------------------------------ redirects
@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x.tif", "s3://bucket/key.tif",
                                    "gopher://127.0.0.1:70/x"])
def test_redirect_to_another_scheme_is_refused(tree: Tree, srv: RangeServer, backends: Any, target: str) -> None:
    srv.add_fault("redirect", path="/cog.tif", location=target)
    backend = backends(AccessPolicy(allow_local=True))  # even where local files are allowed
    err = _denied(tree.collection, tree.aois, backend, match="redirect to a non-HTTP URL refused")
    assert err.url == tree.url and target in str(err)
    assert backend.stats.retries == 0 and all(r.path == "/cog.tif" for r in srv.log)


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/iam/", "http://10.0.0.1/x.tif",
                                    "http://[fd00:ec2::254]/latest/", "https://192.168.0.1/x.tif"])
def test_redirect_into_a_private_network_is_refused(tree: Tree, srv: RangeServer, backends: Any,
                                                    target: str) -> None:
    srv.add_fault("redirect", path="/cog.tif", location=target)
    backend = backends()
    err = _denied(tree.collection, tree.aois, backend, match=r"redirect to .* refused: blocked by the access policy")
    assert err.url == tree.url and target in str(err)
    assert backend.stats.retries == 0 and backend.stats.redirects == 0  # refused before following it


def test_redirect_loop_is_bounded(tree: Tree, srv: RangeServer, backends: Any) -> None:
    srv.add_fault("redirect", path="/cog.tif", location="/hop")
    srv.add_fault("redirect", path="/hop", location="/cog.tif")
    backend = backends()
    with pytest.raises(FetchError, match=r"too many redirects \(more than 5\)") as info:
        tree.collection.read(tree.aois[:1], ["b1"], backend=backend)
    assert (info.value.record_id, info.value.band, info.value.url) == ("rec-0", "b1", tree.url)
    assert srv.requests == 6 and backend.stats.retries == 0  # the request and five redirects, once


# ------------------------------------------------------------------------------------------ addresses
PRIVATE = [
    ("cloud-metadata", "http://169.254.169.254/latest/meta-data/x.tif", "link-local"),
    ("alibaba-metadata", "http://100.100.100.200/x.tif", "not globally routable"),
    ("ten", "http://10.0.0.1/x.tif", "private network"),
    ("one-seven-two", "http://172.16.5.4:8080/x.tif", "private network"),
    ("one-nine-two", "https://192.168.1.1/x.tif", "private network"),
    ("unspecified", "http://0.0.0.0:8000/x.tif", "unspecified"),
    ("ula-v6-metadata", "http://[fd00:ec2::254]/x.tif", "private network"),
    ("link-local-v6", "http://[fe80::1]/x.tif", "link-local"),
    ("v4-mapped-v6", "http://[::ffff:169.254.169.254]/x.tif", "link-local"),
    ("nat64", "http://[64:ff9b::a9fe:a9fe]/x.tif", "link-local"),
    ("hex-octets", "http://0xa9.254.169.254/x.tif", "link-local"),
    ("octal-octets", "http://0251.0376.0251.0376/x.tif", "link-local"),
    ("decimal", "http://2852039166/x.tif", "link-local"),
    ("multicast", "http://224.0.0.251/x.tif", "multicast"),
]


@pytest.mark.parametrize(("name", "href", "why"), PRIVATE, ids=[p[0] for p in PRIVATE])
def test_private_addresses_are_refused_before_connecting(tree: Tree, backends: Any, name: str, href: str,
                                                         why: str) -> None:
    backend = backends()
    err = _denied(tree.pointing_at(href), tree.aois, backend, match=why)
    assert err.url == href
    assert backend.stats.requests == 0  # refused while routing: no connection was attempted


def test_s3_endpoint_in_a_private_network_is_refused(tree: Tree, backends: Any) -> None:
    backend = backends(http=HttpOptions(s3_endpoint="http://10.1.2.3:9000"))
    _denied(tree.pointing_at("s3://bucket/scenes/x.tif"), tree.aois, backend, match="private network")
    assert backend.stats.requests == 0


def test_loopback_is_allowed_by_default_and_can_be_refused(tree: Tree, srv: RangeServer, backends: Any) -> None:
    out = tree.collection.read(tree.aois, ["b1"], backend=backends())
    assert_matches_rasterio(out, tree.cog, tree.aois)
    strict = backends(AccessPolicy(allow_loopback=False))
    srv.reset_counters()
    _denied(tree.collection, tree.aois, strict, match="127.0.0.1 is a loopback address")
    # a host name goes through the resolver, which drops refused addresses ("localhost" is in /etc/hosts)
    named = tree.pointing_at(f"http://localhost:{srv.port}/cog.tif")
    _denied(named, tree.aois, strict, match="localhost resolves to 127.0.0.1")
    assert strict.stats.retries == 0  # a refusal is final
    assert srv.requests == 0 and srv.connections == 0  # nothing reached the server
    # an explicit allowance re-opens exactly that network
    reopened = backends(AccessPolicy(allow_loopback=False, allowed_networks=["127.0.0.0/8"]))
    out = named.read(tree.aois, ["b1"], backend=reopened)
    assert_matches_rasterio(out, tree.cog, tree.aois)


@pytest.mark.parametrize(
    ("address", "policy", "blocked"),
    [
        ("8.8.8.8", {}, False),
        ("2606:4700::1111", {}, False),
        ("127.0.0.1", {}, False),
        ("::1", {}, False),
        ("127.0.0.1", {"allow_loopback": False}, True),
        ("169.254.169.254", {}, True),
        ("169.254.169.254", {"block_private": False}, False),
        ("10.0.0.5", {"allowed_networks": ["10.0.0.0/24"]}, False),
        ("10.0.1.5", {"allowed_networks": ["10.0.0.0/24"]}, True),
        ("192.0.2.1", {}, True),  # documentation range
        ("::ffff:8.8.8.8", {}, False),
        ("2002:a9fe:a9fe::1", {}, True),  # 6to4 wrapping 169.254.169.254
    ],
)
def test_address_rules(address: str, policy: dict[str, Any], blocked: bool) -> None:
    reason = AccessPolicy(**policy).blocked_reason(ipaddress.ip_address(address))
    assert (reason is not None) == blocked, reason


def test_sql_default_policy_refuses_metadata_hrefs(tree: Tree) -> None:
    con = rasterduck.connect()
    try:
        rasterduck.attach(con, "scenes", tree.pointing_at("http://169.254.169.254/latest/meta-data/x.tif"))
        aoi = tree.aois[0].wkb_hex
        with pytest.raises(duckdb.Error, match=r"AccessDeniedError: blocked by the access policy.*record 'rec-0'"):
            con.execute(f"SELECT load_bands(r, from_hex('{aoi}'), ['b1']) FROM scenes r").fetchall()
        rasterduck.attach(con, "local", tree.pointing_at(str(tree.cog)))
        with pytest.raises(duckdb.Error, match="local file access is not allowed"):
            con.execute(f"SELECT load_bands(r, from_hex('{aoi}'), ['b1']) FROM local r").fetchall()
        assert con.execute("SELECT 1").fetchall() == [(1,)]
    finally:
        con.close()


# ------------------------------------------------------------------------------------------ TLS
def test_tls_certificates_are_verified(tree: Tree, tmp_path: Path, backends: Any) -> None:
    """A self-signed server is refused (not retried); trusting its certificate makes it readable.
    (Backend-level: test_io_http.py::test_tls_is_verified.)"""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    with RangeServer(tree.root, tls=(cert, key)) as tls:
        c = tree.pointing_at(tls.url("cog.tif"))
        backend = backends()
        with pytest.raises(FetchError, match="certificate verify failed") as info:
            c.read(tree.aois, ["b1"], backend=backend)
        assert (info.value.record_id, info.value.band) == ("rec-0", "b1") and not info.value.transient
        assert backend.stats.retries == 0 and tls.requests == 0
        trusted = backends(http=HttpOptions(ca_file=str(cert)))
        out = c.read(tree.aois, ["b1"], backend=trusted)
        assert_matches_rasterio(out, tree.cog, tree.aois)
        assert np.all([r.record_id == "rec-0" for r in out])
