"""streamtrain: the corpus is already in its format; StreamLoader with its JSON state.

Runs in the project's own venv. Resume: ``loader.state_dict()`` records which
samples were delivered to the caller; ``load_state_dict`` plans only the rest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import protocol
from streamtrain.loader import StreamLoader


class Streamtrain:
    packages = ("streamtrain",)

    def convert(self, source: Path, out: Path) -> None:
        # the corpus was written by streamtrain's writer: its format is the source itself
        shutil.copytree(source, out)

    def open(self, data: Path, state):
        # StreamLoader decodes with soundfile in its workers and batches by duration buckets (its default)
        loader = StreamLoader(
            data, batch_size=protocol.BATCH_SIZE, num_workers=protocol.WORKERS, seed=protocol.SEED, epochs=1
        )
        if state is not None:
            loader.load_state_dict(state)
        return AsProtocol(loader)


class AsProtocol:
    """StreamLoader's batches (``Batch`` objects) as the protocol's dicts; ``state_dict`` passed through."""

    def __init__(self, loader: StreamLoader):
        self.loader = loader

    def __iter__(self):
        for batch in self.loader:
            yield {"keys": batch.keys, "audio": batch.audio, "audio_lens": batch.audio_lens, "text": batch.text}

    def state_dict(self) -> dict:
        return self.loader.state_dict()


PEERS = {"streamtrain": Streamtrain}

if __name__ == "__main__":
    protocol.main(PEERS)
