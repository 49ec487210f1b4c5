"""Pseudo-labels: a sidecar column written by a frozen teacher, stamped with its fingerprint.

Each sample gets ``<key>.json``: ``{"text", "token_ids", "avg_logprob", "wer",
"keep"}``, where ``wer`` is the label's word error rate against the ground
truth (after the plain normaliser, ``normalizer.plain``) and ``keep`` is false when it exceeds the
``max_wer`` filter. The index also lists a keep file (one byte per sample,
``streamtrain.format.columns``), from which training leaves the keep=false
samples out of its plan before decoding them. The teacher decodes greedily after its prompt (or the one
given); with ``<|notimestamps|>`` in the prompt, Whisper's timestamp tokens are
suppressed, so labels are plain text, as the student is trained on. With
``fill_windows`` the consecutive samples of each batch are joined into the teacher's
window, generated once with timestamps, and each timestamped segment is given back
to its sample (``window_labels``); each label then also says how it was made
(``"labelled"``: window, alone or fallback).

The audio comes through the training loader (``StreamLoader`` with ``shards=``:
this process's shards, each in stored order, in batches that never span two
shards), whose workers read and decode while this process generates and writes
(of a dataset on local disk it makes only the first batch itself). A shard's
column is written once all its samples' labels are in: whole,
atomically, its samples in stored order; a killed run, started again with
the same teacher, settings and dataset content (``label-run.json`` holds the
dataset's fingerprint: a dataset re-packed in place is refused), skips every
shard already complete, so no shard is written twice.

Several processes (``torchrun --nproc_per_node N -m streamtrain label ...``,
``accelerate launch -m streamtrain label ...``) split the shards: shard i is
labelled by rank i mod N, and rank 0, once every rank is done, counts the
column (and its keep file) from the shards written and publishes the index. The column is the one a
single process writes, each key once.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from streamtrain.format.columns import publish_index
from streamtrain.format.dataset import open_dataset
from streamtrain.format.index import DatasetIndex, ShardInfo, ShardList
from streamtrain.format.shard_reader import ShardFile
from streamtrain.format.sidecar import LABELS_COLUMN, aligned_shard_info, base_identity, write_aligned_shard
from streamtrain.format.dataset import Dataset
from streamtrain.loader import StreamLoader
from streamtrain.pack.progress import ProgressReport
from streamtrain.storage.output import Output
from streamtrain.distill.teacher import load_teacher
from streamtrain.distill.window_labels import WindowLabeller
from streamtrain.train.backoff import OomBackoff
from streamtrain.train.evaluate import ErrorCounts, transcribe
from streamtrain.train.model import TextCodec, inference_config
from streamtrain.train.normalizer import plain
from streamtrain.train.whisper_tokenizer import timestamp_ids

RUN_FILE = "label-run.json"


class LabelError(ValueError):
    """A labelling run that cannot continue (other teacher or settings, bad output folder)."""


@dataclass(frozen=True)
class LabelSettings:
    precision: str = "fp32"
    max_wer: float | None = None
    max_tokens: int | None = None  # None: the teacher's own limit (prompt included)
    prompt: str | None = None  # space-separated prompt tokens; None: the teacher's own
    fill_windows: bool = False  # generate once per filled window, with timestamps (window_labels)


@dataclass
class LabelSummary:
    samples: int
    kept: int
    shards_written: int
    shards_skipped: int  # complete from an earlier, interrupted run
    wer: float  # of the labels against the ground truth
    data_wait: float = 0.0  # share of this process's labelling time spent waiting for the next batch of audio
    ranks: int = 1
    #: with fill_windows: samples by how they were labelled (window_labels.WindowLabel), over the whole column
    labelled: dict[str, int] = field(default_factory=dict)


def label_dataset(
    dataset: str,
    teacher_dir: str,
    out_dir: str | Path,
    settings: LabelSettings = LabelSettings(),
    *,
    batch_size: int = 16,
    num_workers: int = 2,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    storage_options: dict | None = None,
) -> LabelSummary:
    """Label ``dataset`` into a column at ``out_dir`` (a folder or URL); see the module docstring.
    ``num_workers``: the loader's processes that read and decode (0: this process does)."""
    if batch_size < 1 or num_workers < 0:  # before the teacher loads
        raise LabelError(f"batch size {batch_size} and {num_workers} workers: the batch size must be >= 1 and "
                         "the number of workers >= 0")
    source = open_dataset(dataset, storage_options)
    with _process_group() as (rank, ranks):
        if str(device) == "cuda" and ranks > 1:  # one GPU a process, as the launcher numbers them on a machine
            device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
        with Output(out_dir, storage_options) as out:
            out.check_writable()  # before the teacher loads and the work starts
            teacher, fingerprint = load_teacher(teacher_dir, settings.precision, device)
            featurizer, codec = inference_config(teacher_dir, teacher.config)
            codec = TextCodec(codec.tokenizer, settings.prompt.split() if settings.prompt else codec.prompt,
                              codec.eos_token, settings.max_tokens or codec.max_tokens)
            suppressed = timestamp_ids(codec.tokenizer) if "<|notimestamps|>" in codec.prompt else []
            featurizer.to(device)
            backoff = OomBackoff("labelling")
            windows = (WindowLabeller(teacher, featurizer, codec, backoff, torch.inference_mode, suppressed)
                       if settings.fill_windows else None)
            run = {"teacher": str(teacher_dir), "teacher_fingerprint": fingerprint, "settings": asdict(settings),
                   **base_identity(source)}
            complete = _prepare(out, run, overwrite) if rank == 0 else set()
            if ranks > 1:
                complete = _from_rank_zero(complete)
            tally = _Tally()
            mine = [n for n in range(len(source.index.shards)) if n % ranks == rank]
            report = ProgressReport("label" if ranks == 1 else f"label rank {rank}",
                                    int(source.index.shards.samples[mine].sum()), "samples", enabled=progress)
            with report:
                todo = []
                for number in mine:
                    shard = source.index.shards[number]
                    if shard.name in complete:  # shards are published under their name only once whole
                        tally.count_complete(number, shard, out.read(shard.name), out.describe(shard.name))
                        report.update(shard.samples)
                    else:
                        todo.append(number)
                started = time.perf_counter()
                loader = StreamLoader(dataset, batch_size=batch_size, epochs=1, num_workers=num_workers,
                                      sample_rate=featurizer.sample_rate, rank=0, world_size=1, shards=todo,
                                      storage_options=storage_options)
                assembled, batches, waited = _ColumnShards(source, out, tally), iter(loader), 0.0
                while True:
                    asked = time.perf_counter()
                    batch = next(batches, None)
                    waited += time.perf_counter() - asked
                    if batch is None:
                        break
                    if windows is None:
                        made = [(generation, None) for generation in transcribe(
                            teacher, featurizer, codec, batch.audio.to(device), batch.audio_lens.to(device),
                            backoff, torch.inference_mode, suppressed)]
                    else:  # joined into windows on the CPU, where the batch is
                        made = [(label.generation, label.labelled) for label in windows.label(
                            batch.audio, batch.audio_lens, batch.seconds.tolist(), batch.keys, device)]
                    labels = [{"json": json.dumps(tally.label(meta["text"], generation, settings.max_wer,
                                                              labelled)).encode()}
                              for meta, (generation, labelled) in zip(batch.meta, made)]
                    assembled.add(*loader.shard_positions(batch.sample_ids.numpy()), batch.keys, labels)
                    report.update(batch.size)
            wait = waited / (time.perf_counter() - started) if tally.written else 0.0
            if ranks > 1:
                written = torch.tensor([tally.written])
                torch.distributed.all_reduce(written)  # also waits for every rank's shards to be published
                if rank != 0:
                    return LabelSummary(len(tally.keys), tally.kept, tally.written, len(tally.infos) - tally.written,
                                        tally.counts.wer, wait, ranks, dict(tally.labelled))
                tally = _Tally(written=int(written))  # the whole column, from the shards every rank wrote
                for number, shard in enumerate(source.index.shards):
                    tally.count_complete(number, shard, out.read(shard.name), out.describe(shard.name))
            index = DatasetIndex(codec="column", sample_rate=None, shards=ShardList.of(tally.infos),
                                 created_by="streamtrain label",
                                 column={"name": LABELS_COLUMN, "kind": "pseudo_labels", **run, "prompt": codec.prompt,
                                         "kept": tally.kept, "label_wer": tally.counts.wer,
                                         **({"labelled": dict(tally.labelled)} if settings.fill_windows else {})})
            publish_index(out, index, source.durations, tally.keys, keep=tally.keep)
        return LabelSummary(source.index.samples, tally.kept, tally.written, len(tally.infos) - tally.written,
                            tally.counts.wer, wait, ranks, dict(tally.labelled))


@contextmanager
def _process_group():
    """(rank, number of processes): a launcher's (WORLD_SIZE > 1: torchrun, accelerate launch), joined
    over gloo, which every machine has; labels travel through the output, not the process group.

    A group joined here is left here: one left to the interpreter's exit can abort the
    process (gloo's threads still running: "terminate called without an active exception").
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield 0, 1
        return
    joined = not torch.distributed.is_initialized()
    if joined:
        torch.distributed.init_process_group("gloo")
    try:
        yield torch.distributed.get_rank(), torch.distributed.get_world_size()
    finally:
        if joined:
            torch.distributed.destroy_process_group()


def _from_rank_zero(value):
    """Rank 0's value on every rank (after rank 0 prepared the output: the others wait for it here)."""
    shared = [value]
    torch.distributed.broadcast_object_list(shared, src=0)
    return shared[0]


@dataclass
class _Tally:
    """What the column's index and the summary need, from shards labelled now or complete from an earlier run."""

    counts: ErrorCounts = field(default_factory=ErrorCounts)
    written: int = 0
    labelled: Counter = field(default_factory=Counter)  # with fill_windows: samples by how they were labelled
    #: by shard number: its info, keys and keep flags (shards complete out of order: workers read runs of them)
    shards: dict[int, tuple[ShardInfo, list[str], list[bool]]] = field(default_factory=dict)

    @property
    def infos(self) -> list[ShardInfo]:
        return [self.shards[n][0] for n in sorted(self.shards)]

    @property
    def keys(self) -> list[str]:
        return [key for n in sorted(self.shards) for key in self.shards[n][1]]

    @property
    def keep(self) -> np.ndarray:
        """One flag per sample, in dataset order: the column's keep file."""
        return np.array([flag for n in sorted(self.shards) for flag in self.shards[n][2]], dtype=bool)

    @property
    def kept(self) -> int:
        return int(self.keep.sum())

    def label(self, text: str, generation, max_wer: float | None, labelled: str | None = None) -> dict:
        """A sample's label, counted; ``labelled``: how, with fill_windows (window, alone, fallback)."""
        word_errors, _ = self.counts.add(text, generation.text)
        words = len(plain(text).split())
        wer = word_errors / max(words, 1)
        keep = max_wer is None or wer <= max_wer
        if labelled is not None:
            self.labelled[labelled] += 1
        return {"text": generation.text, "token_ids": generation.token_ids,
                "avg_logprob": round(generation.avg_logprob, 6), "wer": round(wer, 6), "keep": keep,
                "word_errors": word_errors, "words": words, **({"labelled": labelled} if labelled else {})}

    def count_complete(self, number: int, shard: ShardInfo, data: bytes, origin: str) -> None:
        """Count a shard an earlier run wrote, from its labels."""
        keys, keep = [], []
        for key, members in ShardFile.in_memory(data, origin):
            line = json.loads(members["json"])
            self.counts.word_errors += line["word_errors"]
            self.counts.words += line["words"]
            if "labelled" in line:
                self.labelled[line["labelled"]] += 1
            keep.append(bool(line["keep"]))
            keys.append(key)
        self.shards[number] = aligned_shard_info(shard, len(data), hashlib.sha256(data).hexdigest()), keys, keep


class _ColumnShards:
    """The label shards in the making. The loader's workers each read a run of the shards and their
    batches come round-robin, so a shard's labels can arrive out of order: each goes to its sample's
    place, and a shard is written (whole, in stored order, published atomically) once all are in."""

    def __init__(self, source: Dataset, out: Output, tally: _Tally):
        self.source, self.out, self.tally = source, out, tally
        self.open: dict[int, list] = {}  # shard number -> (key, members) by position, None until labelled
        self.missing: dict[int, int] = {}

    def add(self, shards: np.ndarray, positions: np.ndarray, keys: list[str], members: list[dict[str, bytes]]
            ) -> None:
        for number, position, key, member in zip(shards.tolist(), positions.tolist(), keys, members):
            if number not in self.open:
                self.open[number] = [None] * int(self.source.index.shards.samples[number])
                self.missing[number] = len(self.open[number])
            self.open[number][position] = key, member
            self.missing[number] -= 1
            if self.missing[number] == 0:
                del self.missing[number]
                labelled = self.open.pop(number)
                info, written = write_aligned_shard(self.source.index.shards[number], self.out, labelled)
                keep = [bool(json.loads(members["json"])["keep"]) for _, members in labelled]
                self.tally.shards[number] = info, written, keep
                self.tally.written += 1


def _prepare(out: Output, run: dict, overwrite: bool) -> set[str]:
    """Start a new run, or continue one with the same teacher and settings; the names already there."""
    names = out.names()
    if names and overwrite:
        out.clear()
    elif names and RUN_FILE not in names:
        raise LabelError(f"{out.display}: not empty and not an interrupted labelling run (use --overwrite)")
    elif names:
        previous = json.loads(out.read(RUN_FILE))
        # a setting added since the earlier run was written: that run had its default
        previous["settings"] = {**asdict(LabelSettings()), **previous.get("settings", {})}
        if "base_fingerprint" not in previous:
            raise LabelError(f"{out.display}: the earlier run's {RUN_FILE} records no dataset fingerprint (an older "
                             "streamtrain wrote it), so it cannot be continued safely; use --overwrite to restart")
        if previous["base_fingerprint"] != run["base_fingerprint"]:
            raise LabelError(
                f"{out.display}: an earlier run labelled another dataset ({previous.get('base')}, fingerprint "
                f"{previous['base_fingerprint']}; this one is {run['base']}, fingerprint "
                f"{run['base_fingerprint']}: re-packed since?); use --overwrite to restart")
        differs = sorted(k for k in run if k != "base" and previous.get(k) != run[k])
        if differs:
            raise LabelError(f"{out.display}: an earlier run differs in its {', '.join(differs)}; "
                             "use --overwrite to restart")
        for partial in (name for name in names if name.endswith(".tmp")):
            out.remove(partial)
        return set(names)
    out.create()
    out.write(RUN_FILE, json.dumps(run, indent=1) + "\n")
    return set()
