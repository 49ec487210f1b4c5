"""The measurement protocol that every peer runs, each in its own virtual environment.

This module is imported by ``peer_*.py`` inside that peer's venv, so it needs only
the standard library, numpy, soundfile and torch. It fixes what must be the same
for everyone and measures; a peer module only says how its library converts,
opens, checkpoints and resumes.

What is the same for every peer:
- the corpus: read from streamtrain's packed shards with the standard library's
  ``tarfile`` (``source_samples``), converted once by the peer's own writer;
- the decode: soundfile to float32 mono at 16 kHz (``decode``); a library with
  its own audio API that can use soundfile uses that API set to soundfile;
- the batch: 16 samples, padded to the longest, as a dict with ``keys`` first
  (``collate``; the streamtrain peer hands on the same fields of its ``Batch``); 2 DataLoader
  workers, prefetch factor 2 (torch's default);
- the shuffle: seed 0; libraries that shuffle through a buffer get 500 samples.

A peer module defines ``PEERS = {name: factory}``; ``factory()`` returns an object with
    convert(source: Path, out: Path) -> None     write the peer's native format
    open(data: Path, state) -> Handle           a loader, resumed from ``state`` if given
and the Handle is iterable over batches and has ``state_dict()``: the library's
own checkpoint of the delivered position, taken right after a batch was delivered.

Phases (one fresh process each, so that a resume is a real restart):
    epoch   open, iterate an epoch, close, ``--epochs`` times; per epoch the time to the
            first batch and the steady throughput after it; during the first epoch, the
            keys in order, and ``state_dict()`` saved to a file at 50 % and 95 % of the samples
    resume  open from a saved state; time to its first batch; the keys to the end
Each phase writes one JSON object to ``--out``. Exactly-once is judged by run.py
from the keys of ``epoch`` (up to the checkpoint) and ``resume`` (after it).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import pickle
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile
import torch

BATCH_SIZE = 16
WORKERS = 2
SAMPLE_RATE = 16000
SEED = 0
SHUFFLE_BUFFER = 500
RESUME_AT = (0.5, 0.95)


class DecodeError(ValueError):
    """Audio that is not what the corpus promised (rate, emptiness)."""


# -- the corpus --------------------------------------------------------------------


def source_samples(root: Path) -> Iterator[tuple[str, bytes, dict]]:
    """(key, FLAC bytes, metadata) of every sample of a streamtrain dataset, in shard order.

    Reads ``index.json`` and the tar shards with the standard library only, so that
    any peer's venv can convert the corpus without streamtrain installed.
    """
    for name in _shard_field(root, "name"):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(root / name) as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, ext = info.name.partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(info).read()
        for key, parts in members.items():
            yield key, parts["flac"], json.loads(parts["json"])


def shard_bytes(root: Path) -> int:
    """Mean bytes of a source shard: peers whose writers cut shards by size get this size."""
    sizes = _shard_field(root, "bytes")
    return int(sum(sizes) / len(sizes))


def samples_per_shard(root: Path) -> int:
    return int(max(_shard_field(root, "samples")))


def _shard_field(root: Path, field: str) -> list:
    """One per-shard field of ``index.json``: format 2 stores each as a list, format 1 a list of shard objects."""
    shards = json.loads((root / "index.json").read_text())["shards"]
    return shards[field] if isinstance(shards, dict) else [shard[field] for shard in shards]


# -- decode and collate (identical for every peer) -----------------------------------


def decode(data: bytes) -> np.ndarray:
    """Encoded audio bytes -> float32 mono waveform (T,) at 16 kHz, with soundfile."""
    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:
        raise DecodeError(f"expected {SAMPLE_RATE} Hz audio, got {rate} Hz")
    return audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]


def collate(samples: list[tuple[str, np.ndarray, str]]) -> dict:
    """[(key, waveform (T,), text)] -> {keys, audio (B, T_max), audio_lens (B,), text}."""
    keys, audios, texts = zip(*samples)
    lengths = [len(a) for a in audios]
    audio = torch.zeros(len(audios), max(lengths))
    for row, wave in enumerate(audios):
        audio[row, : len(wave)] = torch.from_numpy(wave)
    return {"keys": list(keys), "audio": audio, "audio_lens": torch.tensor(lengths), "text": list(texts)}


# -- measurement -------------------------------------------------------------------


class StatefulLoaderHandle:
    """A loader that saves and restores its own position (``state_dict`` / ``load_state_dict``)."""

    def __init__(self, loader, state):
        self.loader = loader
        if state is not None:
            self.loader.load_state_dict(state)

    def __iter__(self):
        return iter(self.loader)

    def state_dict(self) -> dict:
        return self.loader.state_dict()


def _anon_kb() -> int:
    """This process's anonymous + shared-memory proportional set size (kB)."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        fields[name] = int(value.split()[0])
    return fields.get("Pss_Anon", 0) + fields.get("Pss_Shmem", 0)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have exited."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _tree_cpu_seconds() -> float:
    """``_cpu_seconds`` plus the CPU of the live descendants (DataLoader workers), read from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, pending = _cpu_seconds(), [os.getpid()]
    while pending:
        pid = pending.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:  # the thread or process has gone
                continue
            for child in children:
                try:
                    fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
                pending.append(child)
    return total


def run_epoch(peer, data: Path, total: int, workdir: Path, snapshot: bool = True) -> dict:
    """One epoch from the start with a new loader; with ``snapshot``, saves the
    peer's state after the batches that reach 50 % and 95 % of ``total`` samples."""
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    handle = peer.open(data, None)
    keys: list[str] = []
    audio_seconds = padded_seconds = first_audio = 0.0
    first = first_samples = None
    snapshots = {}
    for batch in handle:
        now = time.perf_counter()
        audio_seconds += float(batch["audio_lens"].sum()) / SAMPLE_RATE
        padded_seconds += batch["audio"].shape[0] * batch["audio"].shape[1] / SAMPLE_RATE
        if first is None:
            first, first_samples, first_audio = now, len(batch["keys"]), audio_seconds
            first_cpu = _tree_cpu_seconds() - cpu_before  # the workers are alive: read from /proc
        keys.extend(batch["keys"])
        for fraction in RESUME_AT if snapshot else ():
            if fraction not in snapshots and len(keys) >= fraction * total:
                state = handle.state_dict()
                (workdir / f"state-{fraction}.pkl").write_bytes(pickle.dumps(state))
                snapshots[fraction] = {"delivered": len(keys), "state_bytes": _state_size(state)}
    ended = time.perf_counter()
    del handle  # the loader and its workers go before anything else is measured
    gc.collect()
    cpu = _cpu_seconds() - cpu_before
    if first is None:
        raise RuntimeError("the loader yielded no batch")
    steady = max(ended - first, 1e-9)  # after the first batch: the rate a training loop sees
    return {
        "first_batch_s": first - started,
        # CPU of this process and its workers from constructing the loader to its first batch
        "first_batch_cpu_s": first_cpu,
        "epoch_s": ended - started,
        "samples": len(keys),
        "audio_seconds": audio_seconds,
        "padding_fraction": 1 - audio_seconds / padded_seconds if padded_seconds else 0.0,
        "samples_per_s": (len(keys) - first_samples) / steady,
        "audio_s_per_s": (audio_seconds - first_audio) / steady,
        # CPU of this process and its (joined) workers over the whole epoch, start-up included:
        # unlike wall-clock rates, barely moved by other work on the machine
        "cpu_s": cpu,
        "cpu_ms_per_sample": 1000 * cpu / len(keys),
        "keys": keys,
        "snapshots": {str(k): v for k, v in snapshots.items()},
    }


def run_epochs(peer, data: Path, total: int, workdir: Path, epochs: int) -> dict:
    """``epochs`` epochs, each with a new loader; states are saved during the first."""
    baseline_kb = _anon_kb()
    runs = [run_epoch(peer, data, total, workdir, snapshot=(n == 0)) for n in range(epochs)]
    for later in runs[1:]:
        del later["keys"]
    return {"baseline_kb": baseline_kb, "epochs": runs}


def run_resume(peer, data: Path, workdir: Path, fraction: float) -> dict:
    """Restart from the state saved at ``fraction``; first-batch time and the keys to the end."""
    state = pickle.loads((workdir / f"state-{fraction}.pkl").read_bytes())  # written by run_epoch above
    baseline_kb = _anon_kb()
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    handle = peer.open(data, state)
    keys: list[str] = []
    first = first_cpu = None
    for batch in handle:
        if first is None:
            first, first_cpu = time.perf_counter(), _tree_cpu_seconds() - cpu_before
        keys.extend(batch["keys"])
    ended = time.perf_counter()
    del handle  # the loader and its workers go before anything else is measured
    gc.collect()
    return {
        "baseline_kb": baseline_kb,
        "first_batch_s": None if first is None else first - started,
        "first_batch_cpu_s": first_cpu,
        "rest_s": ended - started,
        "keys": keys,
    }


def _state_size(state) -> int:
    try:
        return len(json.dumps(state).encode())
    except TypeError:  # not JSON (tensors, bytes): its pickled size
        return len(pickle.dumps(state))


def directory_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


# -- command line (run by run.py with the peer's venv python) -------------------------


def main(peers: dict[str, Callable[[], object]]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=("convert", "epoch", "resume"))
    parser.add_argument("--peer", required=True, choices=sorted(peers))
    parser.add_argument("--source", type=Path, help="streamtrain dataset to convert (convert)")
    parser.add_argument("--data", type=Path, required=True, help="the peer's converted dataset")
    parser.add_argument("--workdir", type=Path, required=True, help="where states are saved")
    parser.add_argument("--total", type=int, default=0, help="samples in the corpus (epoch)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs to time, each with a new loader (epoch)")
    parser.add_argument("--at", type=float, default=0.5, help="which saved state to resume from")
    parser.add_argument("--out", type=Path, required=True, help="JSON result")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the DataLoader workers are the parallelism, as in streamtrain
    peer = peers[args.peer]()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.phase == "convert":
        started = time.perf_counter()
        peer.convert(args.source, args.data)
        result = {"convert_s": time.perf_counter() - started, "bytes": directory_bytes(args.data)}
    elif args.phase == "epoch":
        result = run_epochs(peer, args.data, args.total, args.workdir, args.epochs)
    else:
        result = run_resume(peer, args.data, args.workdir, args.at)
    result["versions"] = _versions(getattr(peer, "packages", ()))
    args.out.write_text(json.dumps(result))
    os._exit(0)  # some loaders leave non-daemon threads behind; the result is written


def _versions(packages) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "numpy", "soundfile", *packages):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found
