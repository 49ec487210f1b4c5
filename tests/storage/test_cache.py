"""The shard cache: content-addressed, verified on read, a limit that holds at every instant, full disks."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import sys
import tarfile
import threading

import pytest

from streamtrain.loader import StreamLoader
from streamtrain.format.index import load_index
from streamtrain.storage.cache import ShardCache
from tests.support.datasets import replace_shard, write_dataset
from tests.support.servers import file_server

SIZES = [6, 5, 7, 4, 6, 5]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fill(cache: ShardCache, data: bytes):
    return cache.fill(digest(data), len(data), lambda out: out.write(data))


def test_limit_lru_and_a_file_larger_than_the_limit(tmp_path):
    cache = ShardCache(tmp_path, limit_bytes=10)
    assert fill(cache, b"x" * 11) is None
    b = fill(cache, b"y" * 6)
    assert b is not None and b.read() == b"y" * 6 and (tmp_path / f"{digest(b'y' * 6)}.tar").is_file()
    assert fill(cache, b"z" * 6) is not None  # evicts b
    assert cache.open(digest(b"y" * 6), 6) is None and cache.open(digest(b"z" * 6), 6).read() == b"z" * 6
    assert cache.used_bytes() <= 10


def test_a_file_left_by_a_dead_writer_is_removed_and_counted_until_then(tmp_path):
    cache = ShardCache(tmp_path, limit_bytes=10)
    stale = tmp_path / f".{'ab' * 32}.99999.8.tmp"
    stale.write_bytes(b"partial")  # nobody holds its lock: its writer died
    assert fill(cache, b"y" * 6) is not None
    assert not stale.exists() and cache.used_bytes() == 6


def test_used_bytes_counts_an_eviction_and_the_reservation_after_it_once(tmp_path):
    """Another process evicting a file and reserving room between used_bytes' two scans (of files,
    then of reservations) once made it count both: the count takes the cache's lock."""
    measured, writer = ShardCache(tmp_path, limit_bytes=10), ShardCache(tmp_path, limit_bytes=10)
    fill(measured, b"a" * 6)
    fill(measured, b"b" * 4)
    writing, release = threading.Event(), threading.Event()

    def write_slowly(out):
        writing.set()
        release.wait(10)
        out.write(b"c" * 6)

    scan_files = measured._entries

    def scan_files_then_let_the_writer_in():
        files = scan_files()
        filler = threading.Thread(target=writer.fill, args=(digest(b"c" * 6), 6, write_slowly))
        filler.start()
        threads.append(filler)
        writing.wait(1)  # the writer is let in only where nothing holds the lock
        return files

    threads = []
    measured._entries = scan_files_then_let_the_writer_in
    try:
        assert measured.used_bytes() <= 10
    finally:
        release.set()
        for thread in threads:
            thread.join()
    assert ShardCache(tmp_path, limit_bytes=10).used_bytes() <= 10


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    write_dataset(root / "ds", SIZES, seed=8)
    with file_server(root) as url:
        yield root / "ds", f"{url}/ds"


def keys_and_texts(loader):
    return {key: text for batch in loader for key, text in zip(batch.keys, batch.text)}


def with_changed_transcript(data: bytes, key: str, text: str) -> bytes:
    """The same shard with one sample's transcript changed, its size unchanged (the text is padded)."""
    source = tarfile.open(fileobj=io.BytesIO(data))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in source:
            payload = source.extractfile(member).read()
            if member.name == f"{key}.json":
                meta = json.loads(payload)
                meta["text"] = text
                changed = json.dumps(meta).encode()
                assert len(changed) <= len(payload)
                payload = changed + b" " * (len(payload) - len(changed))
            tar.addfile(member, io.BytesIO(payload))
    assert len(out.getvalue()) == len(data)
    return out.getvalue()


@pytest.mark.servers
def test_a_dataset_repacked_at_the_same_url_is_never_served_from_a_stale_copy(served, tmp_path):
    root, url = served
    cache = tmp_path / "cache"
    before = keys_and_texts(StreamLoader(url, batch_size=4, num_workers=2, epochs=1, cache_dir=cache))
    shard = load_index(root).shards[2]
    data = (root / shard.name).read_bytes()
    replace_shard(root, shard.name, with_changed_transcript(data, "utt-002-0001", "changed text"))
    after = keys_and_texts(StreamLoader(url, batch_size=4, num_workers=2, epochs=1, cache_dir=cache))
    assert before["utt-002-0001"] != "changed text" == after["utt-002-0001"]
    assert {k: v for k, v in after.items() if k != "utt-002-0001"} == {
        k: v for k, v in before.items() if k != "utt-002-0001"}


@pytest.mark.servers
def test_bytes_edited_inside_a_cached_copy_are_detected_evicted_and_fetched_again(served, tmp_path, caplog):
    root, url = served
    cache = tmp_path / "cache"
    expected = keys_and_texts(StreamLoader(url, batch_size=4, num_workers=0, epochs=1, cache_dir=cache))
    copy = cache / f"{load_index(root).shards[1].sha256}.tar"
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        loader = StreamLoader(url, batch_size=4, num_workers=0, epochs=1, cache_dir=cache)
        assert keys_and_texts(loader) == expected
    assert "does not match the index's sha256: evicted, fetching again" in caplog.text
    assert copy.read_bytes() == (root / load_index(root).shards[1].name).read_bytes()
    assert loader.stats.cache_hits == len(SIZES) - 1


@pytest.mark.servers
def test_the_limit_holds_at_every_instant_with_three_processes_of_two_workers(served, tmp_path):
    root, url = served
    sizes = sorted(shard.bytes for shard in load_index(root).shards)
    limit = sizes[-1] + sizes[-2] + sizes[0]
    cache = tmp_path / "cache"
    cache.mkdir()
    script = (f"from streamtrain.loader import StreamLoader\n"
              f"l = StreamLoader({url!r}, batch_size=2, num_workers=2, epochs=3, seed=int(__import__('sys').argv[1]), "
              f"cache_dir={str(cache)!r}, cache_limit={limit})\n"
              f"print(sum(len(b.keys) for b in l))\n")
    observed, done = [], threading.Event()

    def size(path):
        try:
            return path.stat().st_size
        except FileNotFoundError:  # renamed or evicted meanwhile
            return 0

    def watch():  # every byte in the folder, temporary files included
        while not done.is_set():
            observed.append(sum(size(p) for p in cache.iterdir() if p.name != ".lock"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        runs = [subprocess.Popen([sys.executable, "-c", script, str(seed)], stdout=subprocess.PIPE, text=True)
                for seed in range(3)]
        outputs = [run.communicate(timeout=300)[0] for run in runs]
    finally:
        done.set()
        watcher.join()
    assert all(run.returncode == 0 for run in runs)
    assert [int(out.strip()) for out in outputs] == [3 * sum(SIZES)] * 3
    assert len(observed) > 10 and max(observed) <= limit
    assert not list(cache.glob(".*.tmp"))


@pytest.mark.servers
def test_a_full_cache_disk_means_reading_on_without_caching_and_one_warning(served, tmp_path):
    """A real fault: the process may not write files over 20 kB (RLIMIT_FSIZE), so every cache fill
    fails with EFBIG, as on a full disk; streaming goes on from the server."""
    root, url = served
    cache = tmp_path / "cache"
    script = (f"import resource, logging; resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
              f"logging.basicConfig(level=logging.WARNING)\n"
              f"from streamtrain.loader import StreamLoader\n"
              f"l = StreamLoader({url!r}, batch_size=3, num_workers=0, epochs=1, cache_dir={str(cache)!r})\n"
              f"print(sorted(k for b in l for k in b.keys))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert eval(result.stdout) == sorted(f"utt-{s:03d}-{i:04d}" for s, n in enumerate(SIZES) for i in range(n))
    assert result.stderr.count("reading on without caching") == 1 and "File too large" in result.stderr
    assert result.stderr.count("shards wait in memory instead") == 1  # the spill folder is "full" too
    assert not [p for p in cache.iterdir() if p.name != ".lock"]
