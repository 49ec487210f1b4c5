"""Remote reads against a server that really misbehaves: stalls, poisoned connections, ignored ranges,
credentials and tokens in URLs. Every fault plan is seeded or listed, so a failure reproduces."""

from __future__ import annotations

import io
import logging
import time

import pytest

from streamtrain.loader import RetryPolicy, StreamLoader
from streamtrain.storage.remote import ReadError, fetch_into
from tests.support.datasets import write_dataset
from tests.support.faults import FaultPlan, fault_server

pytestmark = pytest.mark.servers  # every test starts a server

SIZES = [6, 5, 7, 4]
KEYS = {f"utt-{s:03d}-{i:04d}" for s, n in enumerate(SIZES) for i in range(n)}
QUICK = dict(attempts=4, first_delay=0.01, max_delay=0.05, chunk_bytes=16 * 1024)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    write_dataset(root / "ds", SIZES, seed=6)
    return root


def delivered(loader) -> list[str]:
    return [k for batch in loader for k in batch.keys]


def test_a_stalled_read_is_abandoned_after_stall_timeout_and_retried(root):
    plan = FaultPlan(at={"stall": [1, 4]}, stall_seconds=30.0)
    with fault_server(root, plan) as server:
        started = time.monotonic()
        loader = StreamLoader(f"{server.url}/ds", batch_size=3, num_workers=0, epochs=1,
                              retry=RetryPolicy(**QUICK, stall_timeout=0.5))
        keys = delivered(loader)
        elapsed = time.monotonic() - started
    assert sorted(keys) == sorted(KEYS)
    assert [mode for _, _, mode in server.log] == ["stall", "stall"]
    assert elapsed < 10  # two stalls of 30 s, each abandoned after 0.5 s


def test_a_response_longer_than_its_content_length_is_retried_on_a_fresh_connection(root):
    plan = FaultPlan(at={"long": [0, 2, 3]})
    with fault_server(root, plan) as server:
        loader = StreamLoader(f"{server.url}/ds", batch_size=3, num_workers=0, epochs=1,
                              retry=RetryPolicy(**QUICK), on_bad_sample="skip")
        keys = delivered(loader)
    assert sorted(keys) == sorted(KEYS) and loader.stats.skipped == 0
    assert len(server.log) == 3


def test_a_server_that_ignores_ranges_still_gives_the_right_bytes(root):
    shard = root / "ds" / "shard-000002.tar"
    data = shard.read_bytes()
    plan = FaultPlan(rates={"wrong_range": 1.0})
    with fault_server(root, plan) as server:
        got = io.BytesIO()
        fetch_into(f"{server.url}/ds/shard-000002.tar", len(data), None, got,
                   policy=RetryPolicy(**{**QUICK, "chunk_bytes": 4096}))
    assert got.getvalue() == data and len(server.log) > 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_mix_of_seeded_faults_loses_and_duplicates_nothing(root, seed):
    """One worker, so requests are numbered in a fixed order and the faults reproduce exactly."""
    plan = FaultPlan(rates={"reset": 0.1, "status_5xx": 0.1, "short": 0.05, "long": 0.05, "drip": 0.05},
                     seed=seed, drip_bytes=4096, drip_interval=0.001)
    with fault_server(root, plan) as server:
        loader = StreamLoader(f"{server.url}/ds", batch_size=3, num_workers=0, epochs=1,
                              retry=RetryPolicy(**{**QUICK, "attempts": 8}))
        keys = delivered(loader)
    assert sorted(keys) == sorted(KEYS)
    assert server.log, "the plan injected no fault"


def test_credentials_and_a_token_in_the_url_work_and_are_never_printed(root, caplog):
    with fault_server(root, FaultPlan(at={"status_5xx": [0]}), auth=("alice", "s3cret"), token="SECRET") as server:
        url = server.url.replace("://", "://alice:s3cret@") + "/ds?token=SECRET"
        with caplog.at_level(logging.WARNING):
            loader = StreamLoader(url, batch_size=3, num_workers=0, epochs=1, retry=RetryPolicy(**QUICK))
            assert sorted(delivered(loader)) == sorted(KEYS)
        assert "transient error" in caplog.text  # the 503 was logged...
        assert "s3cret" not in caplog.text and "SECRET" not in caplog.text  # ...without the secrets
        events = str(loader.pop_events())
        assert "s3cret" not in events and "SECRET" not in events
        (root / "ds" / "shard-000001.tar").rename(root / "ds" / "moved.tar")
        try:
            with pytest.raises(ReadError) as raised:
                delivered(StreamLoader(url, batch_size=3, num_workers=0, epochs=1, retry=RetryPolicy(**QUICK)))
        finally:
            (root / "ds" / "moved.tar").rename(root / "ds" / "shard-000001.tar")
    message = str(raised.value)
    assert "shard-000001.tar" in message and "s3cret" not in message and "SECRET" not in message
    without_token = server.url + "/ds"
    with fault_server(root, token="SECRET") as server:
        with pytest.raises(Exception, match="403"):
            StreamLoader(server.url + "/ds", batch_size=3)
    assert without_token
