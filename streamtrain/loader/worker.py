"""What a DataLoader worker does: read the shards its batches need, decode, collate.

A worker receives its list of planned batches (sample ids) and produces them in
order. It keeps open (as files, see ``streamtrain.format.shard_reader``) the shards that
its current and coming batches use, and lets a shard go after the last batch
that needs it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import signal
import time

import numpy as np
import numpy.ma  # noqa: F401  np.unique imports it on first use (numpy 2): once here, not in every forked worker
import torch
from torch.utils.data import IterableDataset, get_worker_info

from streamtrain.loader.batch import Sample, SampleError, WorkerNote, collate, decode_sample
from streamtrain.format.shard_reader import ReadSettings, ReadStats, ShardFile, ShardOpener
from streamtrain.format.sidecar import decode_members
from streamtrain.loader.dataset_sources import DatasetSource, EpochTable
from streamtrain.loader.transfer import AudioSlots
from streamtrain.format.dataset import Dataset
from streamtrain.format.tar_layout import ShardError
from streamtrain.loader.plan import BatchList
from streamtrain.storage.remote import ReadError

log = logging.getLogger("streamtrain.loader")

#: What a bad shard or sample raises: named in one line, with its shard and key.
DATA_ERRORS = (SampleError, ShardError, ReadError)

ON_BAD_SAMPLE = ("raise", "skip")


class ShardWithColumns:
    """A dataset shard opened with the aligned shards of its sidecar columns (checked key by key)."""

    def __init__(self, base: ShardFile, columns: list[tuple[str, ShardFile]]):
        self.base = base
        self.columns = columns
        for _, column in columns:
            if column.keys != base.keys:
                first = next(i for i, (a, b) in enumerate(zip(column.keys, base.keys)) if a != b)
                self.close()
                raise ShardError(f"{column.origin}: sample {first} is {column.keys[first]!r}, "
                                 f"the dataset's is {base.keys[first]!r}")

    def sample(self, position: int) -> tuple[str, dict[str, bytes], dict[str, dict[str, bytes]]]:
        return (self.base.keys[position], self.base.members(position),
                {name: column.members(position) for name, column in self.columns})

    def close(self) -> None:
        for shard in [self.base, *(column for _, column in self.columns)]:
            shard.close()


class ShardWithColumnsOpener:
    """Opens a source's shard (local, remote, cached) with the aligned shards of its sidecar columns."""

    def __init__(self, sources: list[DatasetSource], columns: list[Dataset], settings: ReadSettings):
        self.sources = sources
        self.columns = columns  # sidecar columns of sources[0]
        self.settings = settings
        self.stats = ReadStats()
        self.opener = ShardOpener(settings, self.stats)

    def open(self, source: int, shard: int) -> ShardWithColumns:
        base = self.opener.open(self.sources[source].dataset, shard)
        columns = []
        try:
            for column in self.columns:
                columns.append((column.index.column["name"], self.opener.open(column, shard)))
        except BaseException:
            ShardWithColumns(base, columns).close()
            raise
        return ShardWithColumns(base, columns)


class BatchStream(IterableDataset):
    """Produces planned batches, as (``Collated``, ``WorkerNote``) pairs; worker ``w`` produces the
    batches of ``tasks[w]``.

    A task list is (sequence numbers, batch indices into ``batches``); the
    loader puts the batches back in sequence order. A worker keeps a shard's
    samples until the last of its batches that needs them.
    """

    def __init__(self, table: EpochTable, batches: BatchList, opener: ShardWithColumnsOpener,
                 tasks: list[tuple[np.ndarray, np.ndarray]], slots: AudioSlots | None = None,
                 opened: "dict[int, ShardWithColumns | Exception] | None" = None, borrowed: bool = False):
        self.table = table
        self.batches = batches
        self.opener = opener
        self.tasks = tasks
        self.slots = slots  # shared memory for the audio, in a DataLoader worker
        # shards (by table index) the main process opened and checked before the workers forked: each
        # process uses its own copy of the open file instead of reading and hashing the shard again;
        # ``borrowed``: they are the caller's to close (the main process, which forks after using them)
        self.opened = opened or {}
        self.borrowed = borrowed

    def __iter__(self):
        """``(Collated, WorkerNote)`` per batch; a bad shard or sample (with ``on_bad_sample: raise``) ends
        the stream with the error itself, which the main process raises as it is (a DataLoader would
        re-raise it wrapped in the worker's whole traceback)."""
        try:
            yield from self._batches()
        except DATA_ERRORS as error:
            yield error

    def _batches(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        sequences, indices = self.tasks[worker]
        place = None if self.slots is None else (lambda waveforms: self.slots.pad_into(worker, waveforms))
        mine = self.batches.take(indices)
        shard_of, index_in_shard = self.table.locate(mine.order)
        first_use = shard_of[np.sort(np.unique(shard_of, return_index=True)[1])].tolist()
        first_batch = len(np.unique(shard_of[: int(mine.sizes[0])])) if len(mine) else 0
        with ShardPrefetcher(self.opener, self.table, first_use, self.opener.settings.prefetch_shards,
                             first_batch, dict(self.opened), self.borrowed) as shards:
            release_after = _release_schedule(shard_of, mine.sizes)
            for t, sequence in enumerate(sequences.tolist()):
                first, end = int(mine.starts[t]), int(mine.starts[t] + mine.sizes[t])
                samples, skipped_ids, rows = [], [], []
                for gid, s, i, row in zip(mine.order[first:end].tolist(), shard_of[first:end].tolist(),
                                          index_in_shard[first:end].tolist(), mine.rows(t).tolist()):
                    sample = self._sample(shards.get(s), gid, s, i)
                    if sample is None:
                        skipped_ids.append(gid)
                    else:
                        samples.append(sample)
                        rows.append(row)
                for s in release_after.get(t, ()):
                    shards.release(s)
                collated, slot = collate(samples, self.opener.settings.sample_rate, place,
                                         np.asarray(rows, dtype=np.int64))
                yield collated, WorkerNote(sequence, np.array(skipped_ids, dtype=np.int64),
                                           self.opener.stats.take(), slot)
                shards.look_ahead()  # the first batch is on its way: open the next shards now

    def _sample(self, entry: "ShardWithColumns | Exception", gid: int, shard: int, index: int) -> Sample | None:
        skip = self.opener.settings.on_bad_sample == "skip"
        if isinstance(entry, Exception):
            if not skip:
                raise entry
            self.opener.stats.add(skipped=[f"{self.table.origin(shard)}#{index}: {entry}"])
            return None
        origin = entry.base.origin
        started = time.perf_counter()
        try:
            key, members, columns = entry.sample(index)
            audio, meta = decode_sample(key, members, origin, self.opener.settings.sample_rate)
            columns = {name: decode_members(key, members, origin) for name, members in columns.items()}
        except (SampleError, ShardError) as error:
            if not skip:
                raise
            log.warning("skipping bad sample: %s", error)
            self.opener.stats.add(skipped=[f"{origin}#{index}: {error}"])
            return None
        finally:
            self.opener.stats.add(decode_seconds=time.perf_counter() - started)
        return Sample(key, gid, audio, meta, columns)


class ShardPrefetcher:
    """The shards a worker has open, opened ahead of need (``depth`` at a time, in first-use order)
    by background threads: the next shard's download and sha256 check overlap the current
    one's decoding. A shard that cannot be opened is kept as its error (raised, or its samples
    skipped, by the caller).

    Until ``look_ahead`` is called (when the worker's first batch has been sent), only the
    ``first_batch`` shards that batch needs are opened: shards opened further ahead would
    take the CPU from the first batch, which the training loop is waiting for (fresh or
    resumed); after it, the next ones open while the batches in hand are decoded.
    """

    def __init__(self, opener: ShardWithColumnsOpener, table: EpochTable, first_use: list[int], depth: int,
                 first_batch: int | None = None, opened: "dict[int, ShardWithColumns | Exception] | None" = None,
                 borrowed: bool = False):
        self.opener, self.table = opener, table
        self._inherited = opened or {}  # opened already (``open_shards``): used instead of opening again
        self._borrowed = set(self._inherited) if borrowed else set()  # used, never closed here
        self._upcoming = collections.deque(first_use)
        self._ahead: dict[int, concurrent.futures.Future] = {}
        self._open: dict[int, ShardWithColumns | Exception] = {}
        self._depth = max(0, depth)
        self._pool = concurrent.futures.ThreadPoolExecutor(self._depth) if self._depth else None
        self._held = first_batch  # how many more may start opening before look_ahead; None: no limit

    def __enter__(self) -> "ShardPrefetcher":
        self._fill()
        return self

    def get(self, shard: int) -> ShardWithColumns | Exception:
        if shard not in self._open:
            future = self._ahead.pop(shard, None)
            self._open[shard] = future.result() if future is not None else self._opened(shard)
            if shard in self._upcoming:
                self._upcoming.remove(shard)
            self._fill()
        return self._open[shard]

    def release(self, shard: int) -> None:
        entry = self._open.pop(shard, None)
        if isinstance(entry, ShardWithColumns) and shard not in self._borrowed:
            entry.close()

    def look_ahead(self) -> None:
        """From now on, open up to ``depth`` shards ahead of need."""
        if self._held is not None:
            self._held = None
            self._fill()

    def _fill(self) -> None:
        while self._pool is not None and len(self._ahead) < self._depth and self._upcoming and self._held != 0:
            shard = self._upcoming.popleft()
            self._ahead[shard] = self._pool.submit(self._opened, shard)
            if self._held is not None:
                self._held -= 1

    def _opened(self, shard: int) -> ShardWithColumns | Exception:
        inherited = self._inherited.pop(shard, None)
        return inherited if inherited is not None else _open_or_error(self.opener, self.table, shard)

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        opened_ahead = [f.result() for f in self._ahead.values() if not f.cancelled() and f.exception() is None]
        left = {**self._inherited, **self._open}
        for entry in [*opened_ahead, *(entry for shard, entry in left.items() if shard not in self._borrowed)]:
            if isinstance(entry, ShardWithColumns):
                entry.close()


def open_shards(opener: ShardWithColumnsOpener, table: EpochTable, shards: list[int]
                ) -> dict[int, ShardWithColumns | Exception]:
    """``shards`` (table indices) opened and checked, in threads that have all ended when this returns
    (so that the process may fork): each as its ``ShardWithColumns``, or the error it raised."""
    with concurrent.futures.ThreadPoolExecutor(max(1, min(len(shards), 8))) as pool:
        return dict(zip(shards, pool.map(lambda shard: _open_or_error(opener, table, shard), shards)))


def _open_or_error(opener: ShardWithColumnsOpener, table: EpochTable, shard: int) -> ShardWithColumns | Exception:
    try:
        return opener.open(int(table.source[shard]), int(table.shard[shard]))
    except (ShardError, ReadError) as error:
        if opener.settings.on_bad_sample == "skip":
            log.warning("skipping the rest of shard %s: %s", table.origin(shard), error)
        return error


def _release_schedule(shard_of: np.ndarray, sizes: np.ndarray) -> dict[int, list[int]]:
    """task number -> the shards whose last use is that task."""
    if not len(shard_of):
        return {}
    task_of = np.repeat(np.arange(len(sizes)), sizes)
    shards, last_index = np.unique(shard_of[::-1], return_index=True)
    last_task = task_of[::-1][last_index]
    schedule: dict[int, list[int]] = {}
    for shard, task in zip(shards.tolist(), last_task.tolist()):
        schedule.setdefault(task, []).append(shard)
    return schedule


def worker_init(_worker_id: int) -> None:
    """One intra-op thread per worker (the workers are the parallelism).

    A batch's audio goes to the main process in shared memory named by a file
    (torch's "file_system" strategy, set in the worker only): the default
    strategy passes a file descriptor over a socket with a challenge handshake for
    every tensor, which cost the main process more than the batches' decoding.
    SIGINT and SIGTERM are the main process's to handle: a scheduler that preempts
    a job signals its whole process group, and the main process then finishes the
    step (with its workers' batches), checkpoints, and stops the workers itself."""
    torch.set_num_threads(1)
    torch.multiprocessing.set_sharing_strategy("file_system")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
