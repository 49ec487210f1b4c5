"""The fault-injecting file server, observed with http.client and raw sockets on 127.0.0.1."""

import base64
import http.client
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.support.faults import MODES, FaultPlan, Injection, fault_server, parse_range

SIZE = 100_000
BODY = random.Random(0).randbytes(SIZE)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "ds").mkdir()
    (root / "ds" / "shard-000000.tar").write_bytes(BODY)
    (root / "ds" / "index.json").write_text("{}")
    (root / "secret.txt").write_text("outside")
    return root / "ds"


def get(port: int, path: str = "/shard-000000.tar", headers: dict | None = None, connection=None):
    """(connection, response, body) of one GET; ``connection`` is reused when given."""
    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    return connection, response, response.read()


def raw_request(port: int, path: str = "/shard-000000.tar", extra: str = "") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    return sock


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The response head and whatever body bytes came with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


@pytest.mark.servers
def test_serves_files_with_ranges_and_keep_alive(root):
    with fault_server(root) as server:
        connection, response, body = get(server.port)
        assert (response.status, body) == (200, BODY)
        connection, response, body = get(server.port, headers={"Range": "bytes=10-19"}, connection=connection)
        assert (response.status, response.getheader("Content-Range"), body) == (206, f"bytes 10-19/{SIZE}", BODY[10:20])
        connection, response, body = get(server.port, headers={"Range": "bytes=-5"}, connection=connection)
        assert (response.status, body) == (206, BODY[-5:])
        connection, response, body = get(server.port, headers={"Range": f"bytes={SIZE}-"}, connection=connection)
        assert (response.status, response.getheader("Content-Range")) == (416, f"bytes */{SIZE}")
        connection, response, _ = get(server.port, "/../secret.txt", connection=connection)
        assert response.status == 404
        connection.request("HEAD", "/index.json")
        response = connection.getresponse()
        assert (response.status, response.getheader("Content-Length"), response.read()) == (200, "2", b"")
        assert server.requests == 4 and server.log == []  # GETs of .tar files are numbered, nothing else


def test_parse_range():
    assert parse_range("bytes=0-9", 100) == (0, 10)
    assert parse_range("bytes=90-", 100) == (90, 100)
    assert parse_range("bytes=90-200", 100) == (90, 100)
    assert parse_range("bytes=-10", 100) == (90, 100)
    assert parse_range("bytes=100-", 100) == (100, 100)  # the server answers 416
    for unsupported in (None, "bytes=-", "bytes=5-1", "bytes=0-1,4-5", "items=0-1", "bytes=a-b"):
        assert parse_range(unsupported, 100) is None


def test_a_seeded_plan_is_a_pure_function_of_seed_and_request_number():
    rates = {"reset": 0.1, "status_5xx": 0.1, "stall": 0.05, "long": 0.05}
    plan = FaultPlan(rates, seed=7)
    schedule = [plan.mode(n) for n in range(4000)]
    assert schedule == [FaultPlan(dict(rates), seed=7).mode(n) for n in range(4000)]
    assert schedule != [FaultPlan(rates, seed=8).mode(n) for n in range(4000)]
    for mode, rate in rates.items():
        assert abs(schedule.count(mode) / 4000 - rate) < 0.02
    statuses = {plan.status(n) for n in range(200)}
    assert statuses == {500, 502, 503, 504} and plan.status(5) == FaultPlan(seed=7).status(5)
    explicit = FaultPlan({"reset": 1.0}, at={"long": [3], "short": [0, 5]})
    assert [explicit.mode(n) for n in range(6)] == ["short", "reset", "reset", "long", "reset", "short"]


@pytest.mark.parametrize("bad", [dict(rates={"explode": 0.1}), dict(rates={"reset": 0.7, "stall": 0.4}),
                                 dict(at={"hang": [1]}), dict(statuses=(404,))])
def test_a_bad_plan_is_refused(bad):
    with pytest.raises(ValueError):
        FaultPlan(**bad)


@pytest.mark.servers
def test_the_log_records_each_injection_in_request_order(root):
    plan = FaultPlan({"status_5xx": 0.5}, seed=3)
    with fault_server(root, plan) as server:
        statuses = [get(server.port)[1].status for _ in range(20)]
        get(server.port, "/index.json?token=abc")  # not a shard: neither numbered nor faulted
    expected = [Injection(n, "/shard-000000.tar", "status_5xx") for n in range(20) if plan.mode(n)]
    assert server.log == expected and len(expected) > 3
    assert statuses == [plan.status(n) if plan.mode(n) else 200 for n in range(20)]


@pytest.mark.servers
def test_status_5xx_keeps_the_connection(root):
    with fault_server(root, FaultPlan(at={"status_5xx": [0]}, statuses=(503,))) as server:
        connection, response, _ = get(server.port)
        sock = connection.sock
        connection, response2, body = get(server.port, connection=connection)
    assert (response.status, response2.status, body) == (503, 200, BODY)
    assert connection.sock is sock


@pytest.mark.servers
def test_reset_sends_part_of_the_body_then_a_tcp_reset(root):
    with fault_server(root, FaultPlan(at={"reset": [0]})) as server:
        sock = raw_request(server.port)
        received = len(read_head(sock)[1])
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += len(chunk)
    assert received <= SIZE // 2


@pytest.mark.servers
def test_short_closes_before_content_length(root):
    with fault_server(root, FaultPlan(at={"short": [0]})) as server:
        with pytest.raises(http.client.IncompleteRead) as error:
            get(server.port)
    assert len(error.value.partial) == SIZE // 2


@pytest.mark.servers
def test_long_poisons_the_next_response_on_the_same_connection(root):
    with fault_server(root, FaultPlan(at={"long": [0, 2]})) as server:
        connection, response, body = get(server.port)
        assert (response.status, body) == (200, BODY)
        with pytest.raises(http.client.BadStatusLine, match="JUNK AFTER THE BODY"):
            get(server.port, connection=connection)
        sock = raw_request(server.port, extra="Range: bytes=0-9\r\n")  # on the wire: the body, then junk
        head, rest = read_head(sock)
        while len(rest) < 10 + len(b"JUNK AFTER THE BODY\r\n"):
            rest += sock.recv(100)
    assert b"Content-Length: 10" in head and rest == BODY[:10] + b"JUNK AFTER THE BODY\r\n"


@pytest.mark.servers
def test_wrong_range_answers_200_with_the_whole_file(root):
    with fault_server(root, FaultPlan(at={"wrong_range": [0]})) as server:
        _, response, body = get(server.port, headers={"Range": "bytes=0-9"})
    assert (response.status, len(body)) == (200, SIZE)


@pytest.mark.servers
def test_stall_sends_half_then_nothing_for_the_stall_then_the_rest(root):
    with fault_server(root, FaultPlan(at={"stall": [0]}, stall_seconds=0.6)) as server:
        sock = raw_request(server.port)
        start = time.monotonic()
        received = len(read_head(sock)[1])
        while received < SIZE // 2:
            received += len(sock.recv(65536))
        sock.settimeout(0.4)
        with pytest.raises(socket.timeout):
            sock.recv(65536)
        sock.settimeout(5)
        while received < SIZE:
            received += len(sock.recv(65536))
        elapsed = time.monotonic() - start
    assert received == SIZE and 0.55 < elapsed < 3


@pytest.mark.servers
def test_exit_cuts_a_stall_at_once(root):
    with fault_server(root, FaultPlan(at={"stall": [0]}, stall_seconds=60)) as server:
        sock = raw_request(server.port)
        read_head(sock)
        start = time.monotonic()
    sock.settimeout(5)
    while sock.recv(65536):  # the connection ends: EOF
        pass
    assert time.monotonic() - start < 1


@pytest.mark.servers
def test_lifetime_stops_a_server_whose_client_hangs(root):
    start = time.monotonic()
    with fault_server(root, FaultPlan(at={"stall": [0]}, stall_seconds=60), lifetime=0.5) as server:
        with pytest.raises(http.client.IncompleteRead):
            get(server.port)
    assert 0.45 < time.monotonic() - start < 2


@pytest.mark.servers
def test_drip_delivers_everything_slowly(root):
    plan = FaultPlan(at={"drip": [0]}, drip_bytes=1000, drip_interval=0.01)
    with fault_server(root, plan) as server:
        start = time.monotonic()
        _, response, body = get(server.port, headers={"Range": "bytes=0-29999"})
    assert (response.status, body) == (206, BODY[:30000])
    assert time.monotonic() - start >= 29 * 0.01


@pytest.mark.servers
def test_basic_auth_and_token(root):
    with fault_server(root, auth=("user", "pa:ss"), token="s3cret") as server:
        good = {"Authorization": "Basic " + base64.b64encode(b"user:pa:ss").decode()}
        bad = {"Authorization": "Basic " + base64.b64encode(b"user:wrong").decode()}
        assert get(server.port, "/index.json?token=s3cret")[1].status == 401
        assert get(server.port, "/index.json?token=s3cret", bad)[1].status == 401
        assert get(server.port, "/index.json", good)[1].status == 403
        assert get(server.port, "/index.json?token=nope", good)[1].status == 403
        assert get(server.port, "/index.json?a=1&token=s3cret", good)[2] == b"{}"
        manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        manager.add_password(None, server.url, "user", "pa:ss")
        opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(manager))
        assert opener.open(f"{server.url}/index.json?token=s3cret", timeout=5).read() == b"{}"
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"{server.url}/index.json?token=s3cret", timeout=5)


@pytest.mark.servers
def test_cli_prints_its_url_and_serves(root):
    command = [sys.executable, "-m", "tests.support.faults", str(root), "--seed", "1",
               "--mode", "status_5xx=1.0", "--lifetime", "20"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            url = process.stdout.readline().strip()
            assert urllib.request.urlopen(f"{url}/index.json", timeout=5).read() == b"{}"
            with pytest.raises(urllib.error.HTTPError) as error:
                urllib.request.urlopen(f"{url}/shard-000000.tar", timeout=5)
            assert error.value.code == FaultPlan(seed=1).status(0)
        finally:
            process.terminate()
        assert "injected status_5xx into request 0 /shard-000000.tar" in process.stderr.read()


def test_the_cli_refuses_an_unknown_mode(root):
    result = subprocess.run([sys.executable, "-m", "tests.support.faults", str(root), "--mode", "explode=0.1"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2 and "unknown fault mode 'explode'" in result.stderr
    assert set(MODES) <= set(result.stderr.replace(",", " ").split())
