"""WebDataset: tar shards written by ``wds.ShardWriter``, read by a ``wds.WebDataset`` pipeline.

The pipeline is the one WebDataset's documentation shows for training: shard
list split by node and worker, shard shuffle, sample shuffle buffer, decode,
batch in the workers, ``wds.WebLoader``. Shuffles are seeded, so the order is
reproducible.

Resume: WebDataset has no loader state. What a user can do is replay: count the
delivered batches, rebuild the same pipeline, and skip what was delivered. We
give it the cheapest exact replay we know: each worker drops its share of the
delivered samples *before* decoding (it still reads and untars them). The
DataLoader takes batches from workers in turn (0, 1, 0, 1, ...), so after k
batches worker w has delivered ceil((k - w) / workers) of its batches.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import protocol
import torch
import webdataset as wds


def _decode(sample: dict) -> tuple[str, object, str]:
    return sample["__key__"], protocol.decode(sample["flac"]), json.loads(sample["json"])["text"]


class _Replay:
    """Pipeline stage: in worker w, drop the samples of the batches already delivered."""

    def __init__(self, delivered_batches: int):
        self.delivered_batches = delivered_batches

    def __call__(self, samples):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        skip = max(0, math.ceil((self.delivered_batches - worker) / workers)) * protocol.BATCH_SIZE
        for n, sample in enumerate(samples):
            if n >= skip:
                yield sample


class WebLoaderHandle:
    def __init__(self, data: Path, state):
        self.delivered = 0 if state is None else state["batches"]
        urls = sorted(str(p) for p in data.glob("*.tar"))
        pipeline = (
            wds.WebDataset(urls, shardshuffle=len(urls), seed=protocol.SEED,
                           nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker)
            .shuffle(protocol.SHUFFLE_BUFFER, seed=protocol.SEED)
            .compose(_Replay(self.delivered))
            .map(_decode)
            .batched(protocol.BATCH_SIZE, collation_fn=protocol.collate, partial=True)
        )
        self.loader = wds.WebLoader(pipeline, batch_size=None, num_workers=protocol.WORKERS)

    def __iter__(self):
        for batch in self.loader:
            self.delivered += 1
            yield batch

    def state_dict(self) -> dict:
        return {"batches": self.delivered}  # all a WebDataset user can save


class WebDataset:
    packages = ("webdataset",)

    def convert(self, source: Path, out: Path) -> None:
        out.mkdir(parents=True)
        per_shard = protocol.samples_per_shard(source)
        with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
            for key, flac, meta in protocol.source_samples(source):
                sink.write({"__key__": key, "flac": flac, "json": json.dumps(meta).encode()})

    def open(self, data: Path, state):
        return WebLoaderHandle(data, state)


PEERS = {"webdataset": WebDataset}

if __name__ == "__main__":
    protocol.main(PEERS)
