"""Summarize and verify a packed dataset (``streamtrain inspect``)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from streamtrain.audio import AUDIO_EXTENSIONS, AudioError, probe
from streamtrain.dataset.index import DatasetIndex, DatasetIndexError, ShardInfo, load_index
from streamtrain.dataset.shard import ShardError, ShardSample, read_shard

#: How far a sample's stored ``seconds`` may be from its audio header's length.
#: Lossy codecs and mp3 copies report lengths that can differ by a few frames.
SECONDS_TOLERANCE = 0.05


def summarize(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Totals of a dataset from its index alone (no shard is opened)."""
    index = load_index(dataset_dir)
    return {
        "path": str(dataset_dir),
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
    ]
    return "\n".join(f"{name:<9} {value}" for name, value in lines)


def verify(dataset_dir: str | os.PathLike) -> list[str]:
    """Re-read every shard; a list of problems, each naming its shard (empty: all good).

    Checks each shard's size, sha256 and sample count against the index, and that
    every sample has an audio member whose header agrees with a json member
    holding text, seconds and sample_rate. Keys must be unique across shards.
    """
    root = Path(dataset_dir)
    index = load_index(root)
    problems: list[str] = []
    first_shard: dict[str, str] = {}
    for shard in index.shards:
        for sample in _verify_shard(root, shard, problems):
            problems += [f"{shard.name}: {p}" for p in _sample_problems(sample, index)]
            if sample.key in first_shard:
                problems.append(f"{shard.name}: key {sample.key!r} is also in {first_shard[sample.key]}")
            first_shard.setdefault(sample.key, shard.name)
    return problems


def _verify_shard(root: Path, shard: ShardInfo, problems: list[str]) -> list[ShardSample]:
    """Check one shard file against its index entry; its samples, or [] if unreadable."""
    try:
        data = (root / shard.name).read_bytes()
    except OSError as error:
        problems.append(f"{shard.name}: cannot read: {error.strerror or error}")
        return []
    if len(data) != shard.bytes:
        problems.append(f"{shard.name}: {len(data)} bytes, index says {shard.bytes}")
    if hashlib.sha256(data).hexdigest() != shard.sha256:
        problems.append(f"{shard.name}: sha256 differs from the index")
    try:
        samples = read_shard(data, shard.name)
    except ShardError as error:
        problems.append(str(error))
        return []
    if len(samples) != shard.samples:
        problems.append(f"{shard.name}: {len(samples)} samples, index says {shard.samples}")
    return samples


def _sample_problems(sample: ShardSample, index: DatasetIndex) -> list[str]:
    where = f"sample {sample.key!r}"
    audio = [ext for ext in sample.members if ext in AUDIO_EXTENSIONS]
    if len(audio) != 1:
        return [f"{where}: expected one audio member, found {audio or 'none'}"]
    if "json" not in sample.members:
        return [f"{where}: no json member"]
    try:
        meta = json.loads(sample.members["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return [f"{where}: json member is not valid JSON: {error}"]
    if not isinstance(meta, dict):
        return [f"{where}: json member is not an object"]
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
        info = probe(sample.members[audio[0]])
    except AudioError as error:
        return problems + [f"{where}: {error}"]
    if info.sample_rate != rate:
        problems.append(f"{where}: audio is {info.sample_rate} Hz, json says {rate}")
    elif abs(info.frames / info.sample_rate - seconds) > SECONDS_TOLERANCE:
        problems.append(f"{where}: audio lasts {info.frames / info.sample_rate:.3f} s, json says {seconds}")
    return problems


ERRORS = (DatasetIndexError, ShardError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="a packed dataset folder (with index.json)")
    parser.add_argument("--verify", action="store_true", help="re-read every shard and check it against the index")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    """Print the summary (and problems); 1 when verification finds any."""
    summary = summarize(args.dataset)
    problems = verify(args.dataset) if args.verify else []
    if args.json:
        print(json.dumps({**summary, **({"problems": problems} if args.verify else {})}, indent=1))
    else:
        print(format_summary(summary))
        if args.verify:
            print("\n".join(problems) if problems else f"verified {summary['shards']} shards: OK")
    return 1 if problems else 0
