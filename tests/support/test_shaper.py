"""The link shaper, measured: latency per request and per new connection, shared capacity, window."""

import http.client
import threading
import time

import pytest

from tests.support.faults import FaultPlan, fault_server
from tests.support.servers import s3_server
from tests.support.shaper import link_shaper

pytestmark = pytest.mark.servers  # every test starts a server

MB = 10**6


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("link")
    (root / "big.tar").write_bytes(bytes(range(256)) * (20 * MB // 256))
    (root / "small.json").write_text("{}")
    return root


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def timed_get(port: int, path: str, connection=None, length: int | None = None):
    """(connection, seconds to the first body byte, seconds from there to the last, bytes)."""
    start = time.monotonic()
    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    connection.request("GET", path, headers={"Range": f"bytes=0-{length - 1}"} if length else {})
    response = connection.getresponse()
    first = response.read(1)
    ttfb = time.monotonic() - start
    rest = response.read()
    return connection, ttfb, time.monotonic() - start - ttfb, len(first) + len(rest)


def mbit_s(size: int, seconds: float) -> float:
    return size * 8 / seconds / 1e6


def test_a_request_costs_one_rtt_and_a_new_connection_one_more(root):
    with fault_server(root) as server, link_shaper(server.url, rtt_ms=100, mbit_s=100) as url:
        connection, fresh, _, _ = timed_get(port_of(url), "/small.json")
        _, reused, _, _ = timed_get(port_of(url), "/small.json", connection)
    assert fresh >= 0.2 and 0.1 <= reused < 0.2


def test_one_transfer_moves_at_the_link_rate(root):
    with fault_server(root) as server, link_shaper(server.url, rtt_ms=50, mbit_s=200) as url:
        _, ttfb, seconds, size = timed_get(port_of(url), "/big.tar")
    assert size == 20 * MB and ttfb >= 0.1
    assert 0.6 * 200 <= mbit_s(size, seconds) <= 1.1 * 200


def test_connections_share_the_link(root):
    results = []
    with fault_server(root) as server, link_shaper(server.url, rtt_ms=20, mbit_s=100) as url:
        def download():
            results.append(timed_get(port_of(url), "/big.tar", length=5 * MB))
        threads = [threading.Thread(target=download) for _ in range(2)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - start
    assert [size for *_, size in results] == [5 * MB, 5 * MB]
    assert 0.6 * 100 <= mbit_s(10 * MB, elapsed - 0.04) <= 1.1 * 100
    assert all(mbit_s(5 * MB, seconds) <= 0.6 * 100 for _, _, seconds, _ in results)  # about half each


def test_one_connection_moves_at_most_a_window_per_rtt(root):
    window, rtt = 64 * 1024, 0.05
    with fault_server(root) as server, link_shaper(server.url, rtt_ms=rtt * 1000, mbit_s=1000,
                                                   window_bytes=window) as url:
        _, _, seconds, size = timed_get(port_of(url), "/big.tar", length=MB)
    limit = mbit_s(window, rtt)
    assert 0.6 * limit <= mbit_s(size, seconds) <= 1.1 * limit


def test_resets_and_early_closes_pass_through(root):
    with fault_server(root, FaultPlan(at={"reset": [0], "short": [1]})) as server, \
            link_shaper(server.url, rtt_ms=10, mbit_s=100) as url:
        with pytest.raises(ConnectionResetError):
            timed_get(port_of(url), "/big.tar", length=MB)
        with pytest.raises(http.client.IncompleteRead):
            timed_get(port_of(url), "/big.tar", length=MB)


def test_exit_closes_open_connections_at_once(root):
    with fault_server(root, FaultPlan(at={"stall": [0]}, stall_seconds=60)) as server:
        with link_shaper(server.url, rtt_ms=10, mbit_s=100) as url:
            connection = http.client.HTTPConnection("127.0.0.1", port_of(url), timeout=5)
            connection.request("GET", "/big.tar")
            response = connection.getresponse()
            response.read(1000)
            start = time.monotonic()
        with pytest.raises(http.client.IncompleteRead):
            response.read()
        assert time.monotonic() - start < 1


def test_the_proxy_url_keeps_user_info_path_and_query(root):
    with fault_server(root, auth=("user", "pass"), token="t0k") as server:
        upstream = server.url.replace("http://", "http://user:pass@") + "/small.json?token=t0k"
        with link_shaper(upstream, rtt_ms=10, mbit_s=100) as url:
            assert url == f"http://user:pass@127.0.0.1:{port_of(url.split('@')[1])}/small.json?token=t0k"


def test_s3_through_a_slow_link(tmp_path):
    import s3fs

    with s3_server() as endpoint, link_shaper(endpoint, rtt_ms=40, mbit_s=50) as url:
        local = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        local.mkdir("bucket")
        local.pipe("s3://bucket/x.tar", b"abc" * 10**6)
        remote = s3fs.S3FileSystem(client_kwargs={"endpoint_url": url}, skip_instance_cache=True)
        start = time.monotonic()
        assert remote.cat_file("bucket/x.tar", start=3, end=2 * MB + 3) == (b"abc" * 10**6)[3 : 2 * MB + 3]
    assert time.monotonic() - start >= 2 * MB * 8 / 50e6 + 0.04
