"""``streamtrain index upgrade DATASET``: convert a format 1 index to format 2, in place.

The column files are written first under names no format 1 reader looks at,
then ``index.json`` is replaced atomically: a run interrupted at any point
leaves a dataset that opens, with the old index or the new one, never a mix.
The shards are not touched (format 2 lists the same shards, so the dataset's
fingerprint, and any loader state saved against it, stays valid).
"""

from __future__ import annotations

import os
from pathlib import Path

from streamtrain.format.columns import save_index
from streamtrain.format.index import INDEX_NAME, DatasetIndex, DatasetIndexError, load_index
from streamtrain.format.shard import list_shard_keys
from streamtrain.storage.remote import is_local, local_path, redact


def upgrade_index(root: str | os.PathLike) -> tuple[DatasetIndex, bool]:
    """(the dataset's index after the upgrade, whether anything was converted)."""
    if not is_local(os.fspath(root)):
        raise DatasetIndexError(f"{redact(os.fspath(root))}: index upgrade works on a local folder only "
                                "(copy the dataset here, upgrade it, copy back index.json and its column files)")
    root = Path(local_path(os.fspath(root)))
    index = load_index(root)
    if index.inline_durations is None:
        return index, False
    keys: list[str] = []
    for info in index.shards:
        shard_keys = list_shard_keys(root / info.name)
        if len(shard_keys) != info.samples:
            raise DatasetIndexError(f"{root / info.name}: {len(shard_keys)} samples, the index says {info.samples}")
        keys += shard_keys
    return save_index(root, index, index.inline_durations, keys, INDEX_NAME), True
