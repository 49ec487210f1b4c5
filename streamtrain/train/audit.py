"""The audit trail: which sample keys each optimizer step consumed, on every rank, across resumes.

Each run of the trainer is a *session*; each rank of a session appends JSON
lines to ``<run>/audit/session-KKKK-rank-RRRRR.jsonl.zst``, one zstd frame per
flush (the trainer flushes at every checkpoint). Records:

- ``{"event": "session", "resumed_from_step": S, "world_size": W}``: first in every file;
- ``{"event": "step", "step": N, "epoch": E, "keys": [...]}``;
- ``{"event": "dropped" | "filtered" | "skipped", "epoch": E, "step": N, "samples": [...]}``:
  samples the loader left out on purpose (to equalize ranks, by duration) or as bad;
- ``{"event": "epoch_end", "epoch": E, "step": N}``.

``audit_run`` replays the sessions in order. A session that resumed from step
S rolls back every record of earlier sessions after step S (those steps were
redone), then the samples of each epoch are checked against the dataset.
"""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

AUDIT_DIR = "audit"
_FILE = re.compile(r"session-(\d{4})-rank-(\d{5})\.jsonl\.zst$")


class AuditLog:
    """Appends this rank's records for one session; ``flush`` writes one zstd frame."""

    def __init__(self, run_dir: Path, session: int, rank: int, world_size: int, resumed_from_step: int):
        directory = Path(run_dir) / AUDIT_DIR
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"session-{session:04d}-rank-{rank:05d}.jsonl.zst"
        self._pending: list[dict] = []
        self.add({"event": "session", "resumed_from_step": resumed_from_step, "world_size": world_size})
        self.flush()  # every session leaves its mark, even one killed before its first checkpoint

    def add(self, record: dict) -> None:
        self._pending.append(record)

    def flush(self) -> None:
        if not self._pending:
            return
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in self._pending)
        frame = zstandard.ZstdCompressor(level=10).compress(text.encode())
        with open(self.path, "ab") as f:
            f.write(frame)
            f.flush()
        self._pending = []


def next_session(run_dir: Path) -> int:
    directory = Path(run_dir) / AUDIT_DIR
    sessions = [int(m.group(1)) for p in directory.glob("*.zst") if (m := _FILE.search(p.name))]
    return max(sessions, default=-1) + 1


def read_records(path: Path) -> tuple[list[dict], bool]:
    """The file's records, and whether a torn last frame (a kill mid-write) was ignored."""
    data, position, text = path.read_bytes(), 0, []
    while position < len(data):
        frame = zstandard.ZstdDecompressor().decompressobj()
        try:
            text.append(frame.decompress(data[position:]).decode())
        except zstandard.ZstdError:
            return _parse_lines(text), True
        if not frame.eof:
            return _parse_lines(text[:-1]), True
        position = len(data) - len(frame.unused_data)
    return _parse_lines(text), False


def _parse_lines(chunks: list[str]) -> list[dict]:
    return [json.loads(line) for chunk in chunks for line in chunk.splitlines()]


@dataclass
class EpochAudit:
    epoch: int
    complete: bool
    seen: int = 0
    duplicates: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # neither seen nor explained
    dropped: list[str] = field(default_factory=list)
    filtered: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # seen but not in the dataset

    @property
    def ok(self) -> bool:
        return not self.duplicates and not self.unknown and (not self.complete or not self.missing)


@dataclass
class AuditReport:
    sessions: int
    steps: int
    epochs: list[EpochAudit]
    torn_frames: int

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.epochs)


def audit_run(run_dir: Path, dataset_keys: dict[str, str]) -> AuditReport:
    """Check every epoch of a run against ``dataset_keys`` (``"shard.tar#index"`` -> key)."""
    files = sorted(
        ((int(m.group(1)), int(m.group(2)), p) for p in (Path(run_dir) / AUDIT_DIR).glob("*.zst") if (m := _FILE.search(p.name)))
    )
    by_session: dict[int, list[dict]] = collections.defaultdict(list)
    torn = 0
    for session, _, path in files:
        records, was_torn = read_records(path)
        torn += was_torn
        by_session[session].extend(records)
    kept: list[tuple[int, dict]] = []
    for session in sorted(by_session):
        starts = [r for r in by_session[session] if r["event"] == "session"]
        resumed_from = starts[0]["resumed_from_step"] if starts else 0
        kept = [(s, r) for s, r in kept if r.get("step", 0) <= resumed_from]
        kept += [(session, r) for r in by_session[session] if r["event"] != "session"]
    records = [r for _, r in kept]
    ended = {r["epoch"] for r in records if r["event"] == "epoch_end"}
    epochs = sorted({r["epoch"] for r in records if "epoch" in r})
    all_keys = set(dataset_keys.values())
    report_epochs = []
    for epoch in epochs:
        audit = EpochAudit(epoch, complete=epoch in ended)
        counts = collections.Counter(k for r in records if r["event"] == "step" and r["epoch"] == epoch for k in r["keys"])
        audit.seen = len(counts)
        audit.duplicates = sorted(k for k, n in counts.items() if n > 1)
        audit.unknown = sorted(set(counts) - all_keys)
        for kind in ("dropped", "filtered", "skipped"):
            samples = [s for r in records if r["event"] == kind and r["epoch"] == epoch for s in r["samples"]]
            setattr(audit, kind, sorted(dataset_keys.get(s.split(": ", 1)[0], s) for s in samples))
        explained = set(counts) | set(audit.dropped) | set(audit.filtered) | set(audit.skipped)
        audit.missing = sorted(all_keys - explained)
        report_epochs.append(audit)
    steps = len({r["step"] for r in records if r["event"] == "step"})
    return AuditReport(len(by_session), steps, report_epochs, torn)
