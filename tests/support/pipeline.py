"""``streamtrain eval`` and transformers' ASR pipeline side by side, for the export guarantee's tests.

The pipeline is built from the model folder alone (``pipeline("automatic-speech-
recognition", model=DIR)``, no other argument) and given each utterance's decoded
audio, as a user with an audio array would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.support.cli import run_cli


@dataclass(frozen=True)
class Transcripts:
    key: str
    seconds: float
    streamtrain: str  # the hypothesis `streamtrain eval` wrote
    pipeline: str  # the pipeline's text, as it returned it


def eval_and_pipeline(model_dir: str | Path, dataset: str | Path, out: str | Path) -> list[Transcripts]:
    """Both transcripts of every utterance of ``dataset``; ``out`` receives eval's JSONL."""
    from transformers import pipeline

    from streamtrain.loader import StreamLoader

    run_cli("eval", str(model_dir), str(dataset), "--out", str(out), "--num-workers", "0", "--device", "cpu")
    written = {line["key"]: line["hypothesis"] for line in map(json.loads, Path(out).read_text().splitlines())}
    asr = pipeline("automatic-speech-recognition", model=str(model_dir))
    transcripts = []
    loader = StreamLoader(str(dataset), batch_size=1, epochs=1, num_workers=0,
                          sample_rate=asr.feature_extractor.sampling_rate)
    for batch in loader:
        key, length = batch.keys[0], int(batch.audio_lens[0])
        text = asr(batch.audio[0, :length].numpy())["text"]
        transcripts.append(Transcripts(key, float(batch.seconds[0]), written[key], text))
    return transcripts
