"""Hugging Face datasets: Arrow files written by ``Dataset.save_to_disk``, read by ``load_from_disk``.

The audio column is an ``Audio(decode=False)`` feature holding the FLAC bytes:
``datasets`` would otherwise decode with torchcodec (FFmpeg), and every peer here
decodes with soundfile. The Arrow data is split into as many files as the
source has shards.

Two ways to read it, both as the ``datasets`` documentation shows, both through
torchdata's ``StatefulDataLoader`` (which the documentation recommends for
checkpointing; it wraps the dataset's own ``state_dict``):
- ``hf-map``: the map-style ``Dataset`` with ``shuffle=True`` (a seeded random
  sampler over the memory-mapped table);
- ``hf-iterable``: ``to_iterable_dataset(num_shards)`` + ``shuffle(buffer_size=500)``,
  its streaming path, where each worker reads whole shards.
Decoding happens in ``collate_fn``, in the workers.
"""

from __future__ import annotations

from pathlib import Path

import protocol
import torch
from datasets import Audio, Dataset, Features, Value, load_from_disk
from torchdata.stateful_dataloader import StatefulDataLoader

# Arrow columns as written; ``Audio(decode=False)`` stores exactly this struct.
STORED = Features(
    {"key": Value("string"), "audio": {"bytes": Value("binary"), "path": Value("string")},
     "text": Value("string"), "seconds": Value("float64")}
)


def collate_rows(rows: list[dict]) -> dict:
    return protocol.collate([(r["key"], protocol.decode(r["audio"]["bytes"]), r["text"]) for r in rows])


class HuggingFace:
    packages = ("datasets", "torchdata", "pyarrow")

    def convert(self, source: Path, out: Path) -> None:
        columns = {"key": [], "audio": [], "text": [], "seconds": []}
        for key, flac, meta in protocol.source_samples(source):
            columns["key"].append(key)
            columns["audio"].append({"bytes": flac, "path": f"{key}.flac"})
            columns["text"].append(meta["text"])
            columns["seconds"].append(float(meta["seconds"]))
        shards = len(list(source.glob("*.tar")))
        dataset = Dataset.from_dict(columns, features=STORED)
        # Audio(...).encode_example imports torchcodec even for bytes; casting the stored struct
        # gives the same table and the same audio feature without it
        dataset = dataset.cast_column("audio", Audio(sampling_rate=protocol.SAMPLE_RATE, decode=False))
        dataset.save_to_disk(str(out), num_shards=shards)


class HuggingFaceMap(HuggingFace):
    def open(self, data: Path, state):
        dataset = load_from_disk(str(data))
        loader = StatefulDataLoader(
            dataset, batch_size=protocol.BATCH_SIZE, shuffle=True, num_workers=protocol.WORKERS,
            collate_fn=collate_rows, generator=torch.Generator().manual_seed(protocol.SEED),
        )
        return protocol.StatefulLoaderHandle(loader, state)


class HuggingFaceIterable(HuggingFace):
    def open(self, data: Path, state):
        dataset = load_from_disk(str(data))
        shards = len(list(data.glob("*.arrow")))
        iterable = dataset.to_iterable_dataset(num_shards=shards).shuffle(
            seed=protocol.SEED, buffer_size=protocol.SHUFFLE_BUFFER
        )
        loader = StatefulDataLoader(
            iterable, batch_size=protocol.BATCH_SIZE, num_workers=protocol.WORKERS, collate_fn=collate_rows
        )
        return protocol.StatefulLoaderHandle(loader, state)


PEERS = {"hf-map": HuggingFaceMap, "hf-iterable": HuggingFaceIterable}

if __name__ == "__main__":
    protocol.main(PEERS)
