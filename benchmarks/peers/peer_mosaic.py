"""MosaicML Streaming: MDS shards written by ``MDSWriter``, read by ``StreamingDataset``.

As its documentation recommends: subclass ``StreamingDataset`` and decode in
``__getitem__``; pass the per-device ``batch_size`` to the dataset as well as to
the loader; iterate with ``StreamingDataLoader``, whose ``state_dict()`` /
``load_state_dict()`` checkpoint the number of samples this rank has yielded.
The dataset is local (``local=`` only, nothing to download). Shards are cut at
the source shards' mean size, so both have the same number of shards. MDS
stores the FLAC bytes as they are (no recompression).
"""

from __future__ import annotations

from pathlib import Path

import protocol
from streaming import MDSWriter, StreamingDataLoader, StreamingDataset
from streaming.base.util import clean_stale_shared_memory

COLUMNS = {"key": "str", "flac": "bytes", "text": "str", "seconds": "float64"}


class AudioStreamingDataset(StreamingDataset):
    def __getitem__(self, index: int):
        sample = super().__getitem__(index)
        return sample["key"], protocol.decode(sample["flac"]), sample["text"]


def mosaic_loader(data: Path, state) -> protocol.StatefulLoaderHandle:
    clean_stale_shared_memory()  # documented cleanup of a previous run's shared memory
    dataset = AudioStreamingDataset(
        local=str(data), batch_size=protocol.BATCH_SIZE, shuffle=True, shuffle_seed=protocol.SEED
    )
    loader = StreamingDataLoader(
        dataset, batch_size=protocol.BATCH_SIZE, num_workers=protocol.WORKERS, collate_fn=protocol.collate
    )
    return protocol.StatefulLoaderHandle(loader, state)


class Mosaic:
    packages = ("mosaicml-streaming",)

    def convert(self, source: Path, out: Path) -> None:
        with MDSWriter(out=str(out), columns=COLUMNS, size_limit=protocol.shard_bytes(source)) as writer:
            for key, flac, meta in protocol.source_samples(source):
                writer.write({"key": key, "flac": flac, "text": meta["text"], "seconds": float(meta["seconds"])})

    def open(self, data: Path, state):
        return mosaic_loader(data, state)


PEERS = {"mosaic": Mosaic}

if __name__ == "__main__":
    protocol.main(PEERS)
