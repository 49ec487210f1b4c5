"""Summarize and verify a packed dataset, local or at a URL (``streamtrain inspect``)."""

from __future__ import annotations

import json
import os
from contextlib import closing
from typing import Any

import numpy as np

from streamtrain.audio import AUDIO_EXTENSIONS, AudioError, probe
from streamtrain.format.columns import KEYS, find_duplicate_key
from streamtrain.format.dataset import Dataset, open_dataset
from streamtrain.format.index import DatasetIndex, DatasetIndexError
from streamtrain.format.shard_reader import ReadSettings, ReadStats, ShardOpener
from streamtrain.format.tar_layout import ShardError
from streamtrain.storage.remote import ReadError

#: How far a sample's stored ``seconds`` may be from its audio header's length.
#: Lossy codecs and mp3 copies report lengths that can differ by a few frames.
SECONDS_TOLERANCE = 0.05
#: How far a shard's ``seconds`` may be from the sum of its samples' durations, per sample
#: (format 1 indexes stored each duration to the millisecond).
SAMPLE_SECONDS_ROUNDING = 0.0005


def summarize(dataset: str | os.PathLike) -> dict[str, Any]:
    """Totals of a dataset from its index alone (no shard or column file is opened)."""
    opened = open_dataset(str(dataset))
    index = opened.index
    return {
        "path": opened.display,
        "format_version": index.format_version,
        "samples": index.samples,
        "hours": round(index.seconds / 3600, 6),
        "shards": len(index.shards),
        "bytes": index.bytes,
        "codec": index.codec,
        "sample_rate": index.sample_rate,
        "bitrate": index.bitrate,
        "kbit_per_second": round(index.bytes * 8 / index.seconds / 1000, 3) if index.seconds else 0.0,
        "mean_seconds": round(index.seconds / index.samples, 6) if index.samples else 0.0,
        "max_seconds": index.max_seconds,
        "rejected": index.rejected,
        "created_by": index.created_by,
        "fingerprint": index.fingerprint,
    }


def format_summary(summary: dict[str, Any]) -> str:
    rate = "kept per item" if summary["sample_rate"] is None else f"{summary['sample_rate']} Hz"
    lines = [
        ("dataset", summary["path"]),
        ("samples", f"{summary['samples']}"),
        ("audio", f"{summary['hours']:.3f} h (mean {summary['mean_seconds']:.2f} s, max {summary['max_seconds']:.2f} s)"),
        ("shards", f"{summary['shards']}, {summary['bytes'] / 1e6:.2f} MB"),
        ("codec", f"{summary['codec']}, {rate}"),
        ("bitrate", f"{summary['kbit_per_second']:.1f} kbit/s stored, tar headers included"
                    + ("" if summary["bitrate"] is None else f" (encoder target {summary['bitrate'] / 1000:g} kbit/s)")),
        ("rejected", f"{summary['rejected']}"),
        ("index", f"format {summary['format_version']}, fingerprint {summary['fingerprint']}"
                  + (" (run `streamtrain index upgrade` for format 2)" if summary["format_version"] < 2 else "")),
    ]
    return "\n".join(f"{name:<9} {value}" for name, value in lines)


def verify(dataset: str | os.PathLike) -> list[str]:
    """Re-read every shard and column file; a list of problems, each naming its file (empty: all good).

    Checks the column files' size and sha256, that durations add up to each
    shard's seconds and keys are unique; each shard's size, sha256 and sample
    count against the index (a shard that fails one is named once, with the
    first failure), its keys against the keys column, and that every sample has
    an audio member whose header agrees with a json member holding text, seconds
    and sample_rate. Shards are read as the loader reads them (by offset, one
    sample at a time; a remote shard through a temporary file).
    """
    opened = open_dataset(str(dataset))
    index = opened.index
    problems, keys = _column_problems(opened)
    offsets = index.shards.offsets
    opener = ShardOpener(ReadSettings(storage_options=opened.storage_options, retry=opened.retry), ReadStats())
    for shard in range(len(index.shards)):
        name = index.shards.names[shard]
        try:
            shard_file = opener.open(opened, shard)
        except ReadError as error:
            problems.append(f"{name}: {error.reason}")
            continue
        except ShardError as error:
            problems.append(str(error))
            continue
        check = _sample_problems if index.column is None else _column_sample_problems
        with closing(shard_file):
            try:
                problems += [f"{name}: {p}" for key, members in shard_file for p in check(key, members, index)]
            except ShardError as error:
                problems.append(str(error))
        if keys is not None:
            listed = keys.range(int(offsets[shard]), int(offsets[shard + 1]))
            if listed != shard_file.keys:
                at = next(i for i, (a, b) in enumerate(zip(listed, shard_file.keys)) if a != b)
                problems.append(f"{name}: sample {at} has key {shard_file.keys[at]!r}, the keys column says "
                                f"{listed[at]!r}")
    return problems


def _column_problems(opened: Dataset):
    """Problems of the per-sample columns, and the keys column (None if unusable)."""
    index, problems = opened.index, []
    if index.format_version < 2:
        problems.append("index.json: format 1, without column files (run `streamtrain index upgrade`)")
    try:
        durations = opened.durations
    except DatasetIndexError as error:
        return [*problems, str(error)], None
    sums = np.add.reduceat(durations.astype(np.float64), index.shards.offsets[:-1]) if len(durations) else []
    for name, total, seconds, count in zip(index.shards.names, np.asarray(sums).tolist(),
                                           index.shards.seconds.tolist(), index.shards.samples.tolist()):
        if abs(total - seconds) > SAMPLE_SECONDS_ROUNDING * count + 1e-3:
            problems.append(f"{name}: durations add up to {total:.3f} s, the index says {seconds:.3f} s")
    try:
        opened.keep  # a label column's keep file: its size and sha256
    except DatasetIndexError as error:
        problems.append(str(error))
    if KEYS not in index.columns:
        return problems, None
    try:
        keys = opened.keys
        duplicate = find_duplicate_key([keys])
    except DatasetIndexError as error:
        return [*problems, str(error)], None
    if duplicate is not None:
        key, first, second = duplicate
        shard_of = np.searchsorted(index.shards.offsets, [first, second], side="right") - 1
        problems.append(f"{index.shards.names[shard_of[1]]}: key {key!r} is also in {index.shards.names[shard_of[0]]}")
    return problems, keys


def _json_member(members: dict[str, bytes]) -> dict | str:
    """The sample's json member as an object, or what is wrong with it."""
    if "json" not in members:
        return "no json member"
    try:
        meta = json.loads(members["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return f"json member is not valid JSON: {error}"
    return meta if isinstance(meta, dict) else "json member is not an object"


def _column_sample_problems(key: str, members: dict[str, bytes], index: DatasetIndex) -> list[str]:
    """A sidecar column's sample (pseudo-labels, cached features) has no audio: its json member is checked."""
    meta = _json_member(members)
    return [f"sample {key!r}: {meta}"] if isinstance(meta, str) else []


def _sample_problems(key: str, members: dict[str, bytes], index: DatasetIndex) -> list[str]:
    where = f"sample {key!r}"
    audio = [ext for ext in members if ext in AUDIO_EXTENSIONS]
    if len(audio) != 1:
        return [f"{where}: expected one audio member, found {audio or 'none'}"]
    meta = _json_member(members)
    if isinstance(meta, str):
        return [f"{where}: {meta}"]
    problems = []
    if not isinstance(meta.get("text"), str) or not meta["text"].strip():
        problems.append(f"{where}: json has no text")
    seconds, rate = meta.get("seconds"), meta.get("sample_rate")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        problems.append(f"{where}: json seconds is {seconds!r}")
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        problems.append(f"{where}: json sample_rate is {rate!r}")
    if problems:
        return problems
    if index.sample_rate is not None and rate != index.sample_rate:
        problems.append(f"{where}: sample_rate {rate}, index says {index.sample_rate}")
    try:
        info = probe(members[audio[0]])
    except AudioError as error:
        return problems + [f"{where}: {error}"]
    if info.sample_rate != rate:
        problems.append(f"{where}: audio is {info.sample_rate} Hz, json says {rate}")
    elif abs(info.frames / info.sample_rate - seconds) > SECONDS_TOLERANCE:
        problems.append(f"{where}: audio lasts {info.frames / info.sample_rate:.3f} s, json says {seconds}")
    return problems
