"""Remote datasets against real servers on 127.0.0.1: HTTP, S3 (moto), injected faults, the cache."""

import collections
import logging

import pytest

from streamtrain.loader import RetryPolicy, StreamLoader
from streamtrain.storage.cache import ShardCache
from streamtrain.storage.remote import ReadError, redact
from streamtrain.format.index import DatasetIndexError, load_index
from tests.support.datasets import write_dataset
from tests.support.servers import Faults, fault_proxy, file_server, s3_server, upload_dataset

SIZES = [6, 5, 7, 4, 6]
FAST_RETRY = RetryPolicy(attempts=5, first_delay=0.01, max_delay=0.05, chunk_bytes=32 * 1024)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote") / "ds"
    write_dataset(root, SIZES, seed=11)
    return root


@pytest.fixture(scope="module")
def s3(dataset):
    with s3_server() as endpoint:
        upload_dataset(dataset, "s3://corpus/ds", endpoint)
        yield endpoint


def expected_keys():
    return {f"utt-{s:03d}-{i:04d}" for s, n in enumerate(SIZES) for i in range(n)}


def delivered(loader):
    keys = [k for batch in loader for k in batch.keys]
    assert not [k for k, n in collections.Counter(keys).items() if n > 1], "duplicates"
    return set(keys)


@pytest.mark.servers
def test_http_with_503s_and_dropped_connections_loses_and_duplicates_nothing(dataset):
    faults = Faults(status_503=[0, 4, 9], drop_midway=[2, 6, 13])
    with file_server(dataset.parent) as origin, fault_proxy(origin, faults) as proxy:
        loader = StreamLoader(f"{proxy}/ds", batch_size=3, num_workers=2, epochs=1, retry=FAST_RETRY)
        assert delivered(loader) == expected_keys()
    assert faults.injected == 6


@pytest.mark.servers
def test_at_a_url_the_workers_make_every_batch_and_fetch_in_parallel(dataset, monkeypatch, tmp_path):
    """The first batch is made in the calling process only where shards are local (one read and hash,
    inherited by the workers); at a URL the workers start at once and fetch in parallel."""
    import os

    from tests.loader.test_loader import logged_opens_and_decodes

    log = logged_opens_and_decodes(monkeypatch, tmp_path / "log")
    with file_server(dataset.parent) as origin:
        assert delivered(StreamLoader(f"{origin}/ds", batch_size=3, num_workers=2, epochs=1)) == expected_keys()
    assert {int(pid) for _, pid, _ in log()} and os.getpid() not in {int(pid) for _, pid, _ in log()}


@pytest.mark.servers
def test_http_missing_shard_is_a_clear_error_without_retries(dataset, tmp_path):
    write_dataset(tmp_path / "ds", [3, 3])
    (tmp_path / "ds" / "shard-000001.tar").unlink()
    with file_server(tmp_path) as origin:
        with pytest.raises(ReadError, match=r"shard-000001\.tar: read failed at byte 0 of \d+: no such file"):
            list(StreamLoader(f"{origin}/ds", batch_size=2, num_workers=0, epochs=1, retry=FAST_RETRY))


@pytest.mark.servers
def test_persistent_faults_give_up_naming_the_shard(dataset):
    faults = Faults(status_503=list(range(100)))
    with file_server(dataset.parent) as origin, fault_proxy(origin, faults) as proxy:
        with pytest.raises(ReadError, match=r"shard-0000\d\d\.tar.*after 5 attempt"):
            list(StreamLoader(f"{proxy}/ds", batch_size=2, num_workers=0, epochs=1, retry=FAST_RETRY))


@pytest.mark.servers
def test_s3_streams_exactly_once_with_a_cache_that_respects_its_limit(dataset, s3, tmp_path):
    sizes = sorted(shard.bytes for shard in load_index(dataset).shards)
    limit = sizes[-1] + sizes[-2]  # room for two shards, not five
    cache = tmp_path / "cache"
    options = {"client_kwargs": {"endpoint_url": s3}}
    loader = StreamLoader(
        "s3://corpus/ds", batch_size=2, num_workers=2, epochs=2, storage_options=options,
        cache_dir=cache, cache_limit=limit, retry=FAST_RETRY,
    )
    keys = collections.Counter()
    for batch in loader:
        keys.update(batch.keys)
        assert ShardCache(cache, limit).used_bytes() <= limit
    assert keys == {k: 2 for k in expected_keys()}
    # with room for every shard, a second pass reads nothing remote
    warm = [StreamLoader("s3://corpus/ds", batch_size=2, num_workers=2, epochs=1, storage_options=options,
                         cache_dir=tmp_path / "big", retry=FAST_RETRY) for _ in range(2)]
    assert delivered(warm[0]) == delivered(warm[1]) == expected_keys()
    assert warm[1].stats.bytes_read == 0 and warm[1].stats.cache_hits == warm[1].stats.shards_read > 0


@pytest.mark.servers
def test_s3_through_a_faulty_proxy(dataset, s3):
    faults = Faults(status_503=[1, 5], drop_midway=[3, 8])
    with fault_proxy(s3, faults) as proxy:
        options = {"client_kwargs": {"endpoint_url": proxy}}
        loader = StreamLoader("s3://corpus/ds", batch_size=4, num_workers=2, epochs=1,
                              storage_options=options, retry=FAST_RETRY)
        assert delivered(loader) == expected_keys()
    assert faults.injected == 4


@pytest.mark.servers
def test_credentials_never_appear_in_messages(dataset, caplog):
    assert redact("https://user:s3cret@host:8080/a/b.tar?X-Amz-Signature=abc") == "https://host:8080/a/b.tar"
    faults = Faults(status_503=[0])
    with file_server(dataset.parent) as origin, fault_proxy(origin, faults) as proxy:
        url = proxy.replace("http://", "http://user:s3cret@") + "/ds"
        with caplog.at_level(logging.WARNING, logger="streamtrain.loader"):
            try:
                list(StreamLoader(url, batch_size=8, num_workers=0, epochs=1, retry=FAST_RETRY))
            except Exception as error:  # the server may refuse the user info; the message is what matters
                assert "s3cret" not in str(error)
    assert faults.injected == 1
    assert "s3cret" not in caplog.text and "retry" in caplog.text


def test_cache_paths_cannot_escape_the_cache_dir(tmp_path):
    cache = ShardCache(tmp_path / "cache", 10**6)
    assert cache.path_for("ab" * 32).parent == tmp_path / "cache"  # named by content: a sha256, nothing else
    with pytest.raises(ValueError, match="not a sha256"):
        cache.path_for("../../etc/passwd")
    index = (tmp_path / "index.json")
    write_dataset(tmp_path / "ds", [2])
    text = (tmp_path / "ds" / "index.json").read_text().replace("shard-000000.tar", "../evil.tar")
    index.write_text(text)
    with pytest.raises(DatasetIndexError, match="unsafe shard name"):
        load_index(index)
    index.write_text((tmp_path / "ds" / "index.json").read_text().replace(load_index(tmp_path / "ds").shards[0].sha256,
                                                                        "../../x"))
    with pytest.raises(DatasetIndexError, match="the sha256 of shard 'shard-000000.tar' is not a sha256 digest"):
        load_index(index)
