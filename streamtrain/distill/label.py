"""Pseudo-labels: a sidecar column written by a frozen teacher, stamped with its fingerprint.

Each sample gets ``<key>.json``: ``{"text", "token_ids", "avg_logprob", "wer",
"keep"}``, where ``wer`` is the label's word error rate against the ground
truth (normalised as in evaluation) and ``keep`` is false when it exceeds the
``max_wer`` filter. The teacher decodes greedily after its prompt (or the one
given); with ``<|notimestamps|>`` in the prompt, Whisper's timestamp tokens are
suppressed, so labels are plain text, as the student is trained on. Shards are
written whole and atomically in dataset order; a killed run, started again with
the same teacher and settings, skips every shard already complete, so no shard
is written twice.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from streamtrain.sidecar_writer import (
    DecodedChunk,
    aligned_shard_info,
    write_column_shard,
)
from streamtrain.dataset.columns import save_index
from streamtrain.dataset.dataset import open_dataset
from streamtrain.dataset.index import DatasetIndex, ShardInfo, ShardList
from streamtrain.dataset.shard import read_shard
from streamtrain.storage.atomic import write_json_atomic
from streamtrain.distill.teacher import load_teacher
from streamtrain.train.backoff import OomBackoff
from streamtrain.train.evaluate import ErrorCounts, normalize
from streamtrain.train.model import TextCodec, greedy_generate, inference_config
from streamtrain.train.whisper_tokenizer import timestamp_ids

LABELS_COLUMN = "labels"
RUN_FILE = "label-run.json"


class LabelError(ValueError):
    """A labelling run that cannot continue (other teacher or settings, bad output folder)."""


@dataclass(frozen=True)
class LabelSettings:
    precision: str = "fp32"
    max_wer: float | None = None
    max_tokens: int | None = None  # None: the teacher's own limit (prompt included)
    prompt: str | None = None  # space-separated prompt tokens; None: the teacher's own


@dataclass
class LabelSummary:
    samples: int
    kept: int
    shards_written: int
    shards_skipped: int  # complete from an earlier, interrupted run
    wer: float  # of the labels against the ground truth


def label_dataset(
    dataset: str,
    teacher_dir: str,
    out_dir: str | Path,
    settings: LabelSettings = LabelSettings(),
    *,
    batch_size: int = 16,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> LabelSummary:
    source = open_dataset(dataset)
    teacher, fingerprint = load_teacher(teacher_dir, settings.precision, device)
    featurizer, codec = inference_config(teacher_dir, teacher.config)
    codec = TextCodec(codec.tokenizer, settings.prompt.split() if settings.prompt else codec.prompt,
                      codec.eos_token, settings.max_tokens or codec.max_tokens)
    suppressed = timestamp_ids(codec.tokenizer) if "<|notimestamps|>" in codec.prompt else []
    featurizer.to(device)
    out = Path(out_dir)
    run = {"teacher": str(teacher_dir), "teacher_fingerprint": fingerprint, "settings": asdict(settings),
           "dataset": source.display}
    _prepare(out, run, overwrite)

    backoff = OomBackoff("labelling")
    counts, kept, written, skipped = ErrorCounts(), 0, 0, 0
    infos: list[ShardInfo] = []
    keys: list[str] = []
    bar = tqdm(total=source.index.samples, unit=" samples", disable=not progress, desc="label")

    def label_chunk(chunk: DecodedChunk) -> list[dict[str, bytes]]:
        nonlocal kept

        def generate(pieces):
            results = []
            for piece in pieces:
                with torch.inference_mode():
                    features, _ = featurizer(chunk.audio[piece], chunk.lengths[piece])
                    results += greedy_generate(teacher, features, codec, suppressed)
            return results

        members = []
        for meta, generation in zip(chunk.metas, backoff.run(len(chunk.keys), generate)):
            word_errors, _ = counts.add(meta["text"], generation.text)
            words = len(normalize(meta["text"]).split())
            wer = word_errors / max(words, 1)
            keep = settings.max_wer is None or wer <= settings.max_wer
            kept += keep
            label = {"text": generation.text, "token_ids": generation.token_ids,
                     "avg_logprob": round(generation.avg_logprob, 6), "wer": round(wer, 6), "keep": keep,
                     "word_errors": word_errors, "words": words}
            members.append({"json": json.dumps(label).encode()})
        return members

    for number, shard in enumerate(source.index.shards):
        path = out / shard.name
        if path.is_file():  # complete: shards appear under their name only once closed
            data = path.read_bytes()
            infos.append(aligned_shard_info(shard, len(data), hashlib.sha256(data).hexdigest()))
            skipped += 1
            for sample in read_shard(data, str(path)):
                line = json.loads(sample.members["json"])
                counts.word_errors += line["word_errors"]
                counts.words += line["words"]
                kept += line["keep"]
                keys.append(sample.key)
            bar.update(shard.samples)
            continue
        info, shard_keys = write_column_shard(
            source, number, path, sample_rate=featurizer.sample_rate, batch_size=batch_size, device=device,
            members_for=label_chunk, on_chunk=bar.update,
        )
        infos.append(info)
        keys += shard_keys
        written += 1
    bar.close()
    index = DatasetIndex(codec="column", sample_rate=None, shards=ShardList.of(infos), created_by="streamtrain label",
                         column={"name": LABELS_COLUMN, "kind": "pseudo_labels", **run, "prompt": codec.prompt,
                                 "kept": kept, "label_wer": counts.wer})
    save_index(out, index, source.durations, keys)
    return LabelSummary(source.index.samples, kept, written, skipped, counts.wer)


def _prepare(out: Path, run: dict, overwrite: bool) -> None:
    """Start a new run, or continue one with the same teacher and settings."""
    run_file = out / RUN_FILE
    if out.exists() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not run_file.is_file():
            raise LabelError(f"{out}: not empty and not an interrupted labelling run (use --overwrite)")
        else:
            previous = json.loads(run_file.read_text())
            if previous != run:
                differs = sorted(k for k in run if previous.get(k) != run[k])
                raise LabelError(f"{out}: an earlier run used another {', '.join(differs)}; use --overwrite to restart")
            for partial in out.glob("*.tmp"):
                partial.unlink()
            return
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_file, run)
