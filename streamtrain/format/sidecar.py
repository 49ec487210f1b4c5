"""Sidecar columns: what a dataset's samples gain after packing (cached features, pseudo-labels).

A column is a dataset of its own (``index.json`` + shards) whose shards align
with its base dataset's: the same shard names, the same keys in the same order,
with an index entry ``column`` naming it and carrying the fingerprint of what
produced it. The loader joins a column to each sample by position and checks
the keys (``batch.columns[name]``).

This module owns the format: the column names, how their members are encoded
(``json`` members are JSON; ``feat.zst`` members are features in the codec of
``streamtrain.format.feature_codec``), writing a column shard from member sets
per key, opening a column against its base, and which samples the columns
leave out of training (``left_out``: a pseudo-label column's keep=false
samples, from its keep file). What is computed per sample (features, labels)
is the business of the commands above.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from streamtrain.format.dataset import Dataset, open_dataset
from streamtrain.format.feature_codec import decode_features
from streamtrain.format.index import DatasetIndexError, ShardInfo
from streamtrain.format.shard import ShardWriter
from streamtrain.format.tar_layout import ShardError
from streamtrain.storage.output import Output
from streamtrain.storage.remote import RetryPolicy

#: The column ``streamtrain featurize`` writes, and the extension of its features member.
FEATURES_COLUMN = "features"
FEATURES_EXT = "feat.zst"
#: The column ``streamtrain label`` writes (a ``json`` member per sample).
LABELS_COLUMN = "labels"

log = logging.getLogger("streamtrain.format")


class ColumnError(ShardError):
    """A column member that cannot be decoded; the message names the column shard, key and member."""


def decode_members(key: str, members: dict[str, bytes], origin: str) -> dict:
    """A column's members of one sample: ``json`` parsed, features decoded (float16 tensors), others as bytes."""
    decoded = {}
    for ext, data in members.items():
        try:
            if ext == "json":
                decoded[ext] = json.loads(data)
            elif ext == FEATURES_EXT:
                decoded[ext] = decode_features(data)
            else:
                decoded[ext] = data
        except ValueError as error:
            raise ColumnError(f"{origin}: sample {key!r}: column member .{ext}: {error}") from error
    return decoded


def open_sidecar(url: str, base: Dataset, storage_options: dict | None = None,
                retry: RetryPolicy = RetryPolicy()) -> Dataset:
    """The column at ``url``, checked against ``base``: made from the same content (its fingerprint), with
    the same shard names and sample counts, in the same order.

    The keys are checked shard by shard as the loader opens them.
    """
    column = open_dataset(url, storage_options, retry)
    info = column.index.column
    if info is None or "name" not in info:
        raise DatasetIndexError(f"{column.display}: not a sidecar column (its index.json has no 'column' entry)")
    if column.index.shards.names != base.index.shards.names or not np.array_equal(
        column.index.shards.samples, base.index.shards.samples
    ):
        raise DatasetIndexError(
            f"{column.display}: its shards do not align with {base.display} (names or sample counts differ)")
    if info.get("base_fingerprint") != base.index.fingerprint:
        made_from = (f"fingerprint {info['base_fingerprint']}" if "base_fingerprint" in info
                     else "no fingerprint: written before columns recorded one")
        raise DatasetIndexError(
            f"{column.display}: a {info['name']} column of another dataset: made from {info.get('base')} "
            f"({made_from}), but {base.display} has fingerprint {base.index.fingerprint} (re-packed since?); "
            f"write the column again from this dataset")
    return column


def write_aligned_shard(base: ShardInfo, out: Output, samples: Iterable[tuple[str, dict[str, bytes]]]
                        ) -> tuple[ShardInfo, list[str]]:
    """Write the column shard aligned with ``base`` (same name) from ``(key, members)`` in the base's order,
    and publish it at ``out`` when complete, so a shard there is always whole.

    Returns the column shard's index entry and its keys. A count that differs from the base's is an error.
    """
    writer = ShardWriter(out.stage(base.name))
    keys = []
    try:
        for key, members in samples:
            writer.add(key, members)
            keys.append(key)
        if len(keys) != base.samples:
            raise ShardError(f"{out.describe(base.name)}: {len(keys)} samples written, the base shard has "
                             f"{base.samples}")
        size, sha256 = writer.close()
    except BaseException:
        writer.abort()
        raise
    out.publish(base.name)
    return aligned_shard_info(base, size, sha256), keys


def base_identity(source: Dataset) -> dict:
    """What a column records of the dataset it was made from: its location (for messages) and its
    content fingerprint (shard checksums), which ``open_sidecar`` checks; a path alone would accept a
    dataset re-packed in place with other audio under the same keys."""
    return {"base": source.display, "base_fingerprint": source.index.fingerprint}


def aligned_shard_info(base: ShardInfo, size: int, sha256: str) -> ShardInfo:
    """A column shard's index entry: the base shard's counts and seconds, its own bytes and checksum."""
    return ShardInfo(base.name, base.samples, base.seconds, size, sha256, base.max_seconds)


@dataclass(frozen=True)
class LeftOut:
    """The base samples that a dataset's columns leave out of training (keep=false pseudo-labels)."""

    mask: np.ndarray  # (N,) bool by base position: True = left out
    columns: tuple[dict, ...]  # the columns that leave samples out: {"url", "fingerprint"} each

    @property
    def fingerprints(self) -> list[str]:
        """What identifies the filter: the columns' fingerprints (their shards, from which the keep files are
        derived)."""
        return [column["fingerprint"] for column in self.columns]


def left_out(columns: Sequence[Dataset]) -> LeftOut | None:
    """The samples ``columns`` (sidecars of one base dataset) mark keep=false in their keep files; None if no
    column has a keep file.

    A pseudo-label column written before columns carried a keep file still trains, as before: its keep=false
    samples are read and decoded and the objective gives them no target; that is said once, here.
    """
    mask, named = None, []
    for column in columns:
        info = column.index.column or {}
        if column.keep is None:
            if info.get("kept") is not None and info["kept"] < column.index.samples:
                log.warning("%s: %d of its %d labels are keep=false, but it has no keep file (written before "
                            "streamtrain label wrote one): they are still read and decoded, and get no target; "
                            "run `streamtrain label` again to leave them out when planning",
                            column.display, column.index.samples - info["kept"], column.index.samples)
            continue
        dropped = np.asarray(column.keep) == 0
        mask = dropped if mask is None else mask | dropped
        named.append({"url": column.display, "fingerprint": column.index.fingerprint})
    return None if mask is None else LeftOut(mask, tuple(named))
