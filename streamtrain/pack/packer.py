"""Pack a SOURCE into tar shards and an ``index.json``.

Items are decoded, mixed to mono, resampled and encoded in worker processes
(results are taken in source order, so any worker count writes byte-identical
shards), then appended to shards in order on the main process. The output is
a folder or any fsspec URL (``storage.output``): each shard is published when
complete (at a URL: uploaded, read back and checked, then removed locally, so
local disk holds one shard at a time) and the index is published last, so an
interrupted pack never leaves an index that lists a missing or partial shard.
A rerun with ``overwrite`` removes a previous or interrupted pack's files
(its index first) and packs again.

``part=(i, n)`` packs the i-th of n contiguous slices of the source, with file
names that cannot collide with other parts; ``merge`` joins the parts' indexes.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Iterator

import numpy as np

from streamtrain.audio import (
    AUDIO_EXTENSIONS,
    CODECS,
    OPUS_RATES,
    AudioError,
    decode_segment,
    encode,
    opus_complexity,
    opus_compression_level,
    resample,
)
from streamtrain.format.columns import DURATIONS, KEYS, KeyColumn, concatenate_columns, find_duplicate_key, \
    open_column, publish_index, publish_staged_index
from streamtrain.format.index import INDEX_NAME, ColumnFile, DatasetIndex, ShardInfo, ShardList, parse_index
from streamtrain.format.shard import ShardWriter
from streamtrain.pack.progress import ProgressReport
from streamtrain.pack.sources import Entry, Reject, SourceError, SourceItem, read_source
from streamtrain.storage.output import Output, OutputError
from streamtrain.storage.remote import ReadError, is_local, read_all

PACK_CODECS = (*CODECS, "copy")
DEFAULT_SHARD_SIZE = 256 * 10**6
REJECTS_NAME = "rejects.jsonl"
_PART_INDEX = re.compile(r"index\.part-(\d+)-of-(\d+)\.json")


class PackError(ValueError):
    """Bad packing options or an output folder that cannot be used."""


@dataclass
class PackSummary:
    out_dir: str
    index: str  # the index file written: index.json, or index.part-...json for a part
    samples: int
    seconds: float
    shards: int
    bytes: int
    rejected: int
    reencoded: int  # codec "copy" only: items re-encoded as flac because they could not be kept
    elapsed_seconds: float

    @property
    def hours(self) -> float:
        return self.seconds / 3600

    def __str__(self) -> str:
        text = (
            f"packed {self.samples} samples ({self.hours:.3f} h) into {self.shards} shards, "
            f"{self.bytes / 1e6:.1f} MB, in {self.elapsed_seconds:.1f} s; rejected {self.rejected}"
        )
        if self.reencoded:
            text += f"; re-encoded as flac {self.reencoded}"
        return f"{text} -> {self.out_dir}/{self.index}"


@dataclass(frozen=True)
class _Layout:
    """File names of a whole pack, or of part (i, n) of one."""

    part: tuple[int, int] | None

    @property
    def _tag(self) -> str:
        i, n = self.part
        width = max(4, len(str(n)))
        return f"{i:0{width}d}-of-{n:0{width}d}"

    def shard_name(self, number: int) -> str:
        if self.part is None:
            return f"shard-{number:06d}.tar"
        return f"shard-p{self._tag.replace('-of-', 'of')}-{number:06d}.tar"

    @property
    def index_name(self) -> str:
        return INDEX_NAME if self.part is None else f"index.part-{self._tag}.json"

    @property
    def rejects_name(self) -> str:
        return REJECTS_NAME if self.part is None else f"rejects.part-{self._tag}.jsonl"

    def owns(self, name: str) -> bool:
        """Whether ``name`` is a file this pack (or a serial pack, for part None) writes."""
        if self.part is None:
            pattern = (r"(shard-.*\.tar(\.tmp)?|index(\.part-.*)?\.(json|durations\.f32|keys\.txt)|"
                       r"rejects(\.part-.*)?\.jsonl|\..*\.tmp-\d+)")
        else:
            stem = self.shard_name(0)[: -len("000000.tar")]
            index_stem = re.escape(self.index_name[: -len(".json")])
            pattern = (
                rf"({re.escape(stem)}\d+\.tar(\.tmp)?|{index_stem}\.(json|durations\.f32|keys\.txt)|"
                rf"{re.escape(self.rejects_name)}|\.{index_stem}\.[^/]*\.tmp-\d+)"
            )
        return re.fullmatch(pattern, name) is not None

    def belongs_to_sibling(self, name: str) -> bool:
        """A file of another part of the same ``n``: parts share their output folder."""
        if self.part is None:
            return False
        i, n = self.part
        return any(_Layout((j, n)).owns(name) for j in range(n) if j != i)


@dataclass(frozen=True)
class _Encoding:
    """How every item of a pack is encoded."""

    codec: str
    sample_rate: int | None  # None keeps each item's rate
    bitrate: int | None  # opus only
    complexity: int | None  # opus only; None for the default
    storage_options: dict | None = None  # fsspec's, to read audio at URLs


@dataclass
class _Encoded:
    key: str
    members: dict[str, bytes]
    seconds: float
    reencoded: bool


def pack(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    codec: str = "flac",
    sample_rate: int | None = 16000,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 1,
    part: tuple[int, int] | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    source_form: str | None = None,
    kaldi_pipes: bool = False,
    bitrate: int | None = None,
    opus_complexity: int | None = None,
    storage_options: dict | None = None,
) -> PackSummary:
    """Pack ``source`` into ``out_dir`` (a folder or any fsspec URL); see the module docstring.

    ``sample_rate=None`` keeps each item's rate. ``part=(i, n)`` is 0-based.
    Bad items raise ``SourceError`` naming their origin, or with ``skip_bad``
    are skipped and listed in ``rejects.jsonl``. ``workers > 1`` forks worker
    processes on Linux and spawns them elsewhere, where a script calling it needs
    the usual ``if __name__ == "__main__":`` guard. ``kaldi_pipes`` runs the ``cmd |``
    entries of a Kaldi ``wav.scp`` (refused otherwise). ``bitrate`` (bit/s, opus
    only) sets the encoder's target; by default libopus picks (about 25 kbit/s
    for 16 kHz speech). ``opus_complexity`` (0-10, opus only) is libopus's
    complexity, by default ``audio.DEFAULT_OPUS_COMPLEXITY``. ``storage_options``
    (fsspec's) apply to a remote ``source``, its audio and ``out_dir``.
    """
    started = time.monotonic()
    encoding = _Encoding(codec, sample_rate, bitrate, opus_complexity, storage_options)
    _check_options(encoding, shard_size, workers, part)
    layout = _Layout(part)
    with Output(out_dir, storage_options) as out:
        entries = _slice(read_source(source, source_form, kaldi_pipes=kaldi_pipes,
                                     storage_options=storage_options), part)
        problems = [entry for entry in entries if isinstance(entry, Reject)]
        if problems and not skip_bad:
            raise SourceError(_first_problem(problems))
        _prepare_out_dir(out, layout, overwrite)
        shards = _ShardSequence(out, layout, shard_size)
        rejects, reencoded = _write_shards(entries, shards, encoding, workers, skip_bad, progress)
        if rejects:
            _guard_write(out.describe(layout.rejects_name),
                         lambda: out.write(layout.rejects_name, "".join(_reject_line(r) for r in rejects)))
        if rejects and not shards.infos and part is None:  # a part may be all bad: the other parts are not
            raise PackError(f"all {len(rejects)} items were rejected, nothing to pack (see "
                            f"{out.describe(layout.rejects_name)}); the first: {rejects[0].message()}")
        index = DatasetIndex(codec=codec, sample_rate=sample_rate, shards=ShardList.of(shards.infos),
                             rejected=len(rejects), created_by=_created_by(), bitrate=bitrate)
        _guard_write(out.describe(layout.index_name),
                     lambda: publish_index(out, index, np.asarray(shards.durations, dtype=np.float32), shards.keys,
                                           layout.index_name))
    return PackSummary(out_dir=out.display, index=layout.index_name, samples=index.samples, seconds=index.seconds,
                       shards=len(shards.infos), bytes=index.bytes, rejected=len(rejects), reencoded=reencoded,
                       elapsed_seconds=time.monotonic() - started)


def _write_shards(entries: list[Entry], shards: "_ShardSequence", encoding: _Encoding, workers: int, skip_bad: bool,
                  progress: bool) -> tuple[list[Reject], int]:
    """Encode ``entries`` into ``shards``, each published when complete; (the rejects, how many were re-encoded)."""
    rejects: list[Reject] = []
    reencoded = 0
    report = ProgressReport(_describe(shards.layout), len(entries), "samples", enabled=progress)
    results = _encode_all(entries, encoding, workers)
    try:
        for result in results:
            report.update()
            if isinstance(result, Reject):
                if not skip_bad:
                    raise SourceError(result.message())
                rejects.append(result)
                continue
            shards.add(result)
            reencoded += result.reencoded
            report.show(hours=f"{shards.seconds / 3600:.3f}")
        shards.close()
    except BaseException:
        shards.abort()
        raise
    finally:
        results.close()  # stops the worker pool now, not whenever the generator is collected
        report.close()
    return rejects, reencoded


def merge(out_dir: str | os.PathLike, storage_options: dict | None = None) -> DatasetIndex:
    """Join the part indexes in ``out_dir`` (a folder or URL) into ``index.json`` and remove them.

    Checks that all n parts are there, that they agree on codec, sample rate and bitrate,
    that their shards are there and that no key is in two shards (read from the
    keys columns). Part rejects files are joined into ``rejects.jsonl``.
    """
    with Output(out_dir, storage_options) as out:
        names = out.names()
        layouts, indexes = _load_parts(out, names)
        shards = ShardList.of([])
        for index in indexes:
            shards = shards + index.shards
        missing = sorted(set(shards.names) - set(names))
        if missing:
            raise PackError(f"{out.describe(missing[0])}: shard listed in a part index is missing")
        parts = {name: [(open_column(out.url, index.columns[name], storage_options), index.columns[name])
                        for index in indexes] for name in (DURATIONS, KEYS)}
        duplicate = find_duplicate_key([KeyColumn(values, column.length, out.describe(column.file))
                                        for values, column in parts[KEYS]])
        if duplicate is not None:
            key, first, second = duplicate
            raise PackError(f"{out.display}: key {key!r} is in both {_shard_at(shards, first)} and "
                            f"{_shard_at(shards, second)}")
        merged = DatasetIndex(codec=indexes[0].codec, sample_rate=indexes[0].sample_rate, bitrate=indexes[0].bitrate,
                              shards=shards, rejected=sum(index.rejected for index in indexes),
                              created_by=indexes[0].created_by)
        merged_rejects = _merge_rejects(out, layouts, names)
        _guard_write(out.describe(INDEX_NAME), lambda: _publish_merged(out, merged, parts))
        for name in [*(layout.index_name for layout in layouts), *merged_rejects,
                     *(column.file for columns in parts.values() for _, column in columns)]:
            _guard_write(out.describe(name), lambda: out.remove(name))
    return merged


def _load_parts(out: Output, names: list[str]) -> tuple[list[_Layout], list[DatasetIndex]]:
    """The layouts and indexes of all n parts in ``out``, checked to belong together."""
    found: dict[int, str] = {}
    counts: set[int] = set()
    for name in names:
        match = _PART_INDEX.fullmatch(name)
        if match:
            found[int(match.group(1))] = name
            counts.add(int(match.group(2)))
    if not found:
        raise PackError(f"{out.display}: no part indexes (index.part-*-of-*.json) to merge")
    if len(counts) > 1:
        raise PackError(f"{out.display}: part indexes of different part counts {sorted(counts)}; "
                        "pack them into separate folders")
    (n,) = counts
    layouts = [_Layout((i, n)) for i in range(n)]
    missing = [layout.index_name for i, layout in enumerate(layouts) if i not in found]
    if missing:
        raise PackError(f"{out.display}: {len(missing)} of {n} parts are missing ({', '.join(missing)})")
    indexes = [parse_index(out.read(found[i]).decode(), out.describe(found[i])) for i in range(n)]
    for layout, index in zip(layouts, indexes):
        if _encoding(index) != _encoding(indexes[0]):
            raise PackError(
                f"{out.describe(layout.index_name)}: {_encoding(index)} differs from part 0's {_encoding(indexes[0])}"
            )
        missing_columns = {DURATIONS, KEYS} - set(index.columns)
        if missing_columns:
            raise PackError(f"{out.describe(layout.index_name)}: lists no {', '.join(sorted(missing_columns))} column")
    return layouts, indexes


def _merge_rejects(out: Output, layouts: list[_Layout], names: list[str]) -> list[str]:
    """Join the parts' rejects files into ``rejects.jsonl``; the names of the parts' files."""
    reject_files = [layout.rejects_name for layout in layouts if layout.rejects_name in names]
    if reject_files:
        text = "".join(out.read(name).decode("utf-8") for name in reject_files)
        _guard_write(out.describe(REJECTS_NAME), lambda: out.write(REJECTS_NAME, text))
    return reject_files


def _publish_merged(out: Output, merged: DatasetIndex, parts: dict[str, list[tuple[np.ndarray, ColumnFile]]]) -> None:
    """Write the merged column files and publish them, then the merged index (last)."""
    root = out.stage(INDEX_NAME).parent
    merged.columns = {name: concatenate_columns(root, INDEX_NAME, name, columns) for name, columns in parts.items()}
    publish_staged_index(out, merged, INDEX_NAME)


def _shard_at(shards: ShardList, position: int) -> str:
    """The name of the shard holding the dataset's ``position``-th sample."""
    return shards.names[int(np.searchsorted(shards.offsets, position, side="right") - 1)]


def _encoding(index: DatasetIndex) -> str:
    """How a part was encoded, in words: what the parts of one dataset must share."""
    rate = "kept rates" if index.sample_rate is None else f"{index.sample_rate} Hz"
    target = "" if index.bitrate is None else f" at {index.bitrate} bit/s"
    return f"codec {index.codec}{target}, {rate}"


def _check_options(encoding: _Encoding, shard_size: int, workers: int, part: tuple[int, int] | None) -> None:
    codec, sample_rate = encoding.codec, encoding.sample_rate
    if codec not in PACK_CODECS:
        raise PackError(f"unknown codec {codec!r}; expected one of {', '.join(PACK_CODECS)}")
    if sample_rate is not None and (isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0):
        raise PackError(f"sample rate must be a positive integer or None (keep), not {sample_rate!r}")
    if codec == "opus" and sample_rate not in OPUS_RATES:
        raise PackError(f"opus needs a sample rate of {', '.join(map(str, OPUS_RATES))} Hz, not {sample_rate}")
    for name, value, check in (("bitrate", encoding.bitrate, opus_compression_level),
                               ("complexity", encoding.complexity, opus_complexity)):
        if value is not None:
            if codec != "opus":
                raise PackError(f"a {name} applies to --codec opus only, not {codec}")
            try:
                check(value)
            except AudioError as error:
                raise PackError(str(error)) from None
    if not isinstance(shard_size, int) or shard_size <= 0:
        raise PackError(f"shard size must be a positive number of bytes, not {shard_size!r}")
    if not isinstance(workers, int) or workers < 1:
        raise PackError(f"workers must be at least 1, not {workers!r}")
    if part is not None:
        i, n = part
        if not (isinstance(i, int) and isinstance(n, int) and 0 <= i < n):
            raise PackError(f"part must be (i, n) with 0 <= i < n, not {part!r}")


def _slice(entries: list[Entry], part: tuple[int, int] | None) -> list[Entry]:
    """The i-th of n contiguous slices; bad entries included, so each part owns its rejects."""
    if part is None:
        return entries
    i, n = part
    return entries[len(entries) * i // n : len(entries) * (i + 1) // n]


def _first_problem(problems: list[Reject]) -> str:
    more = len(problems) - 1
    suffix = f" ({more} more bad item{'s' * (more > 1)}; skip_bad / --skip-bad skips them)" if more else ""
    return problems[0].message() + suffix


def _describe(layout: _Layout) -> str:
    return "pack" if layout.part is None else f"pack part {layout.part[0]}/{layout.part[1]}"


def _prepare_out_dir(out: Output, layout: _Layout, overwrite: bool) -> None:
    """Create ``out``; refuse files in the way unless ``overwrite``, which removes a previous pack's files.

    Files this pack does not recognise are never removed. A stale index.json
    goes first, so no index ever describes a half-replaced dataset.
    """
    try:
        out.create()
        names = out.names()
    except OSError as error:
        raise PackError(f"cannot use output folder {out.display}: {error.strerror or error}") from error
    in_the_way = [name for name in names if not layout.belongs_to_sibling(name)]
    if in_the_way and not overwrite:
        raise PackError(
            f"output folder {out.display} is not empty ({in_the_way[0]}{' ...' * (len(in_the_way) > 1)}); "
            "pass overwrite / --overwrite to replace a previous pack"
        )
    if overwrite:
        stale = [INDEX_NAME] + [name for name in in_the_way if name != INDEX_NAME and layout.owns(name)]
        for name in stale:
            _guard_write(out.describe(name), lambda: out.remove(name))


class _ShardSequence:
    """Appends samples to shards, rolling over before a shard would pass ``shard_size``;
    each shard is published as soon as it is complete.

    Collects what the index needs: each shard's entry, and each sample's duration and key.
    """

    def __init__(self, out: Output, layout: _Layout, shard_size: int):
        self.out = out
        self.layout = layout
        self.shard_size = shard_size
        self.infos: list[ShardInfo] = []
        self.durations: list[float] = []
        self.keys: list[str] = []
        self.seconds = 0.0
        self._writer: ShardWriter | None = None
        self._first = 0  # position of the open shard's first sample

    def add(self, sample: _Encoded) -> None:
        writer = self._writer
        if writer is not None and writer.bytes_if_added(sample.key, sample.members) > self.shard_size:
            self._finish()
            writer = None
        if writer is None:
            path = self.out.stage(self.layout.shard_name(len(self.infos)))
            writer = self._writer = _guard_write(str(path), lambda: ShardWriter(path))
        _guard_write(str(writer.tmp_path), lambda: writer.add(sample.key, sample.members))
        self.durations.append(sample.seconds)
        self.keys.append(sample.key)
        self.seconds += sample.seconds

    def close(self) -> None:
        if self._writer is not None:
            self._finish()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def _finish(self) -> None:
        writer, self._writer = self._writer, None
        size, sha256 = _guard_write(str(writer.tmp_path), writer.close)
        name = writer.path.name
        _guard_write(self.out.describe(name), lambda: self.out.publish(name))
        seconds = self.durations[self._first :]
        self.infos.append(ShardInfo(name, len(seconds), round(sum(seconds), 6), size, sha256, round(max(seconds), 6)))
        self._first = len(self.durations)


def _encode_all(entries: list[Entry], encoding: _Encoding, workers: int) -> Iterator[_Encoded | Reject]:
    """Encoded samples (or rejects) in source order, from ``workers`` processes."""
    jobs = [(entry, encoding) for entry in entries]
    if workers == 1:
        yield from map(_encode_job, jobs)
        return
    size = max(1, min(16, len(jobs) // (workers * 8)))
    chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    context = _start_method()
    processes: dict[Connection, BaseProcess] = {}  # the main process's end of each worker's pipe -> the worker
    try:
        for _ in range(workers):
            pipe, theirs = context.Pipe()
            processes[pipe] = context.Process(target=_serve, args=(theirs,), daemon=True)
            processes[pipe].start()
            theirs.close()
        for chunk in _in_order(processes, chunks):
            yield from chunk
    finally:
        for process in processes.values():
            process.terminate()  # idle in recv() by now, or abandoned mid-chunk when packing stopped early
            process.join()
        for pipe in processes:
            pipe.close()


def _in_order(processes: dict[Connection, BaseProcess], chunks: list[list]) -> Iterator[list]:
    """Each chunk's results, in order. A worker holds at most two chunks and gets
    the next as soon as it returns one; results that come early wait here. So at
    most 2 x workers chunks of encoded audio are in memory however slow the shard
    writes are, and no thread polls (multiprocessing.Pool's worker handler wakes
    for every result not yet read: 0.25 s of CPU per 2000 flac items, measured,
    which on 2 cores comes out of the workers' time)."""
    pending = iter(enumerate(chunks))
    for pipe in [*processes, *processes]:
        _send_next(pipe, pending)
    done: dict[int, list] = {}
    for number in range(len(chunks)):
        while number not in done:
            for pipe in wait(list(processes)):
                index, results = _receive(pipe, processes[pipe])
                done[index] = results
                _send_next(pipe, pending)
        yield done.pop(number)


def _send_next(pipe: Connection, pending: Iterator[tuple[int, list]]) -> None:
    job = next(pending, None)
    if job is not None:
        pipe.send(job)


def _receive(pipe: Connection, process: BaseProcess) -> tuple[int, list]:
    try:
        index, results = pipe.recv()
    except (EOFError, ConnectionResetError):  # the worker is gone, killed or crashed
        process.join(timeout=5)
        raise PackError(f"a pack worker process ended unexpectedly (exit code {process.exitcode})") from None
    if isinstance(results, BaseException):
        raise results
    return index, results


def _serve(pipe: Connection) -> None:
    """A worker: encode each chunk of jobs the main process sends and send back the
    results, or the exception that stopped it (a bug: bad audio is a Reject)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches all; the main process stops the workers
    while True:
        index, jobs = pipe.recv()
        try:
            results = [_encode_job(job) for job in jobs]
        except Exception as error:
            results = error
        pipe.send((index, results))


def _start_method() -> multiprocessing.context.BaseContext:
    """fork on Linux: a worker starts in milliseconds with the modules it needs
    already loaded (spawn took 1-2 s per worker to import torch, which workers no
    longer use). Workers run no torch and no thread pool (resampling keeps BLAS on
    the calling thread), so threads the parent may run, torch's included, are never
    waited for in a worker. Elsewhere spawn, as macOS's system libraries want."""
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _encode_job(job: tuple[Entry, _Encoding]) -> _Encoded | Reject:
    entry, encoding = job
    if isinstance(entry, Reject):
        return entry
    try:
        return _encode_item(entry, encoding)
    except AudioError as error:
        return Reject(entry.origin, entry.key, f"{entry.location}: {error}")


def _encode_item(item: SourceItem, encoding: _Encoding) -> _Encoded:
    source = _audio_bytes(item, encoding.storage_options)
    waveform, info = decode_segment(source, item.start, item.end)
    if len(waveform) == 0:
        raise AudioError("no audio samples")
    codec, rate = encoding.codec, info.sample_rate
    target = encoding.sample_rate or rate
    whole_file = item.start is None and item.end is None
    reencoded = False
    if codec == "copy" and whole_file and info.ext in AUDIO_EXTENSIONS and rate == target:
        audio, ext = (source if isinstance(source, bytes) else Path(source).read_bytes()), info.ext
        frames = len(waveform)
    else:
        reencoded = codec == "copy"
        waveform = resample(waveform, rate, target)
        audio, ext = encode(waveform, target, "flac" if codec == "copy" else codec, encoding.bitrate, encoding.complexity)
        frames = len(waveform)
    meta = {**item.fields, "text": item.text, "seconds": round(frames / target, 6), "sample_rate": target}
    if item.start is not None:
        meta["start"] = item.start
    if item.end is not None:
        meta["end"] = item.end
    members = {ext: audio, "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}
    return _Encoded(item.key, members, frames / target, reencoded)


def _audio_bytes(item: SourceItem, storage_options: dict | None) -> str | bytes:
    """The item's audio: a local path, or the bytes of a piped command's output, of a tar member or of a
    file at a URL."""
    if item.piped:
        return _piped_audio(item.audio)
    if item.member is not None:
        return _tar_member(item.audio, item.member)
    if is_local(item.audio):
        return item.audio
    try:
        return read_all(item.audio, storage_options)
    except ReadError as error:
        raise AudioError(f"cannot read: {error.reason}") from None


def _tar_member(path: str, member: str) -> bytes:
    """A member of a (WebDataset) tar file, read by offset; each process lists a tar's members once."""
    try:
        offset, size = _tar_members(path)[member]
        with open(path, "rb") as file:
            data = os.pread(file.fileno(), size, offset)
    except (OSError, tarfile.TarError) as error:
        raise AudioError(f"cannot read: {error}") from None
    except KeyError:
        raise AudioError("no such member (was the tar file changed since it was listed?)") from None
    if len(data) != size:
        raise AudioError(f"truncated: {len(data)} of {size} bytes")
    return data


@functools.lru_cache(maxsize=4)
def _tar_members(path: str) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size) of a tar file, from its headers. Reads go by ``pread``, never
    through a shared file position: a forked worker may inherit this cache."""
    with tarfile.open(path) as tar:
        return {info.name: (info.offset_data, info.size) for info in tar.getmembers() if info.isreg()}


def _piped_audio(command: str) -> bytes:
    """What a Kaldi ``cmd |`` entry writes to stdout; the shell runs it in the current folder, as Kaldi does."""
    result = subprocess.run(command, shell=True, stdin=subprocess.DEVNULL, capture_output=True)
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", "replace").strip()[-500:]
        raise AudioError(f"the command failed with exit status {result.returncode}" + (f": {stderr}" if stderr else ""))
    if not result.stdout:
        raise AudioError("the command wrote no audio to stdout")
    return result.stdout


def _reject_line(reject: Reject) -> str:
    return json.dumps({"origin": reject.origin, "key": reject.key, "reason": reject.reason}, ensure_ascii=False) + "\n"


def _guard_write(where: str, action):
    """Run a write; an OSError becomes a one-line PackError naming ``where`` (an OutputError names it already)."""
    try:
        return action()
    except OutputError as error:
        raise PackError(str(error)) from error
    except OSError as error:
        raise PackError(f"cannot write {where}: {error.strerror or error}") from error


def _created_by() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"streamtrain {version('streamtrain')}"
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "streamtrain"
