"""Lhotse: Lhotse Shar written by ``CutSet.to_shar``, read by ``CutSet.from_shar``.

Conversion: each sample becomes a ``Recording.from_bytes`` (the FLAC bytes) cut
with one supervision carrying the text; ``to_shar(fields={"recording": "flac"})``
writes ``cuts.*.jsonl.gz`` + ``recording.*.tar`` shards of the same sample count
as the source shards (Lhotse re-encodes the audio as FLAC with its writer).

Loading, as Lhotse documents for a resumable sampler: the sampler lives in the
main process (map-style ``DataLoader(dataset, sampler=sampler, batch_size=None)``),
the dataset's ``__getitem__`` receives a ``CutSet`` batch and loads audio with
``cut.load_audio()`` in the workers. Lhotse's audio backend is set to libsndfile
(soundfile), the decoder every peer uses. ``DynamicCutSampler(max_cuts=16,
shuffle=True)`` with the common 500-sample shuffle buffer; shards are shuffled
too. Resume: ``sampler.state_dict()`` / ``sampler.load_state_dict()``, which
fast-forwards the sampler over the batches it had already drawn.
"""

from __future__ import annotations

from pathlib import Path

import lhotse
import protocol
import torch
from lhotse import CutSet, Recording, SupervisionSegment
from lhotse.dataset import DynamicCutSampler


class AudioFromCuts(torch.utils.data.Dataset):
    """Map-style dataset: a CutSet (one batch, from the sampler) -> a collated batch."""

    def __getitem__(self, cuts: CutSet) -> dict:
        samples = []
        for cut in cuts:
            audio = cut.load_audio()  # (channels, T) float32, through Lhotse's libsndfile backend
            samples.append((cut.id, audio.mean(axis=0) if audio.shape[0] > 1 else audio[0], cut.supervisions[0].text))
        return protocol.collate(samples)


class LhotseHandle:
    def __init__(self, data: Path, state):
        cuts = CutSet.from_shar(in_dir=data, shuffle_shards=True, seed=protocol.SEED)
        self.sampler = DynamicCutSampler(
            cuts, max_cuts=protocol.BATCH_SIZE, shuffle=True, seed=protocol.SEED,
            shuffle_buffer_size=protocol.SHUFFLE_BUFFER,
        )
        if state is not None:
            self.sampler.load_state_dict(state)
        self.loader = torch.utils.data.DataLoader(
            AudioFromCuts(), sampler=self.sampler, batch_size=None, num_workers=protocol.WORKERS
        )

    def __iter__(self):
        return iter(self.loader)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()


class Lhotse:
    packages = ("lhotse",)

    def __init__(self):
        lhotse.set_current_audio_backend("LibsndfileBackend")

    def convert(self, source: Path, out: Path) -> None:
        out.mkdir(parents=True)
        cuts = []
        for key, flac, meta in protocol.source_samples(source):
            recording = Recording.from_bytes(flac, recording_id=key)
            cut = recording.to_cut()
            cut.supervisions = [
                SupervisionSegment(id=key, recording_id=key, start=0.0, duration=recording.duration, text=meta["text"])
            ]
            cuts.append(cut)
        CutSet.from_cuts(cuts).to_shar(
            out, fields={"recording": "flac"}, shard_size=protocol.samples_per_shard(source)
        )

    def open(self, data: Path, state):
        return LhotseHandle(data, state)


PEERS = {"lhotse": Lhotse}

if __name__ == "__main__":
    protocol.main(PEERS)
