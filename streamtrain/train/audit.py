"""The audit trail: which samples each optimizer step consumed, on every rank, across resumes.

Each run of the trainer is a *session*; each rank of a session appends JSON
lines to ``<run>/audit/session-KKKK-rank-RRRRR.jsonl.zst``, one zstd frame per
flush (the trainer flushes at every checkpoint). In a run folder at a URL the
file is appended to in the local staging folder and uploaded whole at each
flush; ``audit_run`` reads a local folder (the command downloads the logs). Samples are named by their
id in the epoch's sample table (see ``streamtrain.loader.dataset_sources``), never by
key or URL, so a record costs a few bytes per sample. Records:

- ``{"event": "session", "resumed_from_step": S, "world_size": W}``: first in every file;
- ``{"event": "step", "step": N, "epoch": E, "ids": [...]}``;
- the loader's events (``StreamLoader.pop_events``), each with the step that
  consumed the batch they came with: ``epoch`` (the epoch's plan: datasets by
  fingerprint, weights, seed, duration limits and window length, table size), ``dropped`` (the
  leftover batches no rank takes, fewer than the world size), ``skipped`` (bad
  samples), ``epoch_end``, ``mixture_change`` (the data changed at a resume:
  the next plan of the epoch has another table).

``audit_run`` replays the sessions in order. A session that resumed from step
S rolls back every record of earlier sessions after step S (those steps were
redone). Then each epoch's table is rebuilt from the datasets' indexes alone
(no shard is read) and every sample is accounted for with a few bits of
memory each: seen once, or filtered by a label column's keep file (keep=false
pseudo-labels) or else by the duration limits (both recomputed from the
indexes, not taken from the log), or dropped to equalize ranks (bounded), or
skipped as bad; anything else is a duplicate or a gap. An epoch whose data
mixture changed at a resume is checked against the loader's own carry-over
rule: nothing delivered before the change comes again (datasets removed and
added back included), everything the new mixture wants comes once, and what
the change took out is counted as left out. Such an epoch is also counted by
sample (dataset fingerprint and position) across all its tables, independently
of that rule: a sample delivered more often than any of its tables offers it
is a repeat, whatever the rule says.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zstandard

from streamtrain.loader.bitmap import Bitmap
from streamtrain.loader.mixture import Mixture, carry_epoch
from streamtrain.loader.dataset_sources import DatasetSource, EpochTable, epoch_table, per_gid
from streamtrain.loader.state import SampleSet
from streamtrain.format.dataset import Dataset
from streamtrain.format.sidecar import left_out
from streamtrain.loader.plan import inside_limits
from streamtrain.train.run_folder import RunFolder

AUDIT_DIR = "audit"
SHOWN = 10
_FILE = re.compile(r"session-(\d{4})-rank-(\d{5})\.jsonl\.zst$")


class AuditLogError(ValueError):
    """An audit log whose records lack what the audit needs (written by hand, or by another program)."""


class AuditLog:
    """Appends this rank's records for one session; ``flush`` writes one zstd frame."""

    def __init__(self, run_dir: RunFolder | Path, session: int, rank: int, world_size: int, resumed_from_step: int):
        self.run = RunFolder.of(run_dir)
        self.name = f"{AUDIT_DIR}/session-{session:04d}-rank-{rank:05d}.jsonl.zst"
        self.path = self.run.local / self.name
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
        self.run.publish(self.name)  # at a URL: the whole file again (an object cannot be appended to)


def next_session(run_dir: RunFolder | Path) -> int:
    sessions = [int(m.group(1)) for name in RunFolder.of(run_dir).names(AUDIT_DIR) if (m := _FILE.search(name))]
    return max(sessions, default=-1) + 1


@dataclass
class EpochAudit:
    epoch: int
    complete: bool
    samples: int = 0
    seen: int = 0
    duplicates: int = 0
    missing: int = 0  # neither seen nor explained
    dropped: int = 0
    filtered: int = 0  # by the duration limits
    filtered_by_label: int = 0  # keep=false in a label column (not counted again by duration)
    skipped: int = 0
    unknown: int = 0  # ids that are not in the epoch's table
    mixture_changes: int = 0  # resumes that changed the epoch's data mixture
    left_out: int = 0  # samples the epoch's first mixture offered, not delivered, that a change took out
    repeated: int = 0  # samples (by dataset and position) delivered more often than any of the epoch's tables offers
    problems: list[str] = field(default_factory=list)  # plan inconsistencies (e.g. too many dropped batches)
    examples: dict[str, list[str]] = field(default_factory=dict)  # kind -> up to SHOWN samples, named

    @property
    def ok(self) -> bool:
        return not self.duplicates and not self.repeated and not self.unknown and not self.problems and (
            not self.complete or not self.missing)


@dataclass
class AuditReport:
    sessions: int
    steps: int
    epochs: list[EpochAudit]
    torn_frames: int

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.epochs)


DatasetResolver = Callable[[str, str], Dataset]  # (fingerprint, url as logged) -> the opened dataset


def encode_ids(ids: np.ndarray) -> str:
    """Sample ids as text for a JSON record: ``u4:`` or ``u8:`` + base64 of little-endian integers."""
    ids = np.asarray(ids, dtype=np.int64)
    wide = len(ids) and int(ids.max()) >= 2**32
    return ("u8:" if wide else "u4:") + base64.b64encode(ids.astype("<u8" if wide else "<u4").tobytes()).decode()


def decode_ids(value: str | list) -> np.ndarray:
    """The inverse of ``encode_ids``; a plain JSON list of ids is accepted too (the loader's events)."""
    if isinstance(value, list):
        return np.asarray(value, dtype=np.int64)
    kind, _, data = value.partition(":")
    return np.frombuffer(base64.b64decode(data), dtype="<u8" if kind == "u8" else "<u4").astype(np.int64)


def audit_run(run_dir: Path, resolve: DatasetResolver) -> AuditReport:
    """Check every epoch of a run; ``resolve`` opens the datasets the log names by fingerprint.

    Records are streamed file by file; memory is a few bits per sample of each epoch.
    """
    files = sorted(
        (int(m.group(1)), int(m.group(2)), p)
        for p in (Path(run_dir) / AUDIT_DIR).glob("*.zst") if (m := _FILE.search(p.name))
    )
    resumed = {}
    for session, _, path in files:
        first = next(_stream(path, []), {"event": "session", "resumed_from_step": 0})
        resumed.setdefault(session, first.get("resumed_from_step", 0))
    sessions = sorted(resumed)
    cutoffs = {s: min((resumed[later] for later in sessions[i + 1 :]), default=None) for i, s in enumerate(sessions)}
    tallies: dict[int, _EpochTally] = {}
    torn: list[bool] = []
    last_step = 0
    for session, _, path in files:
        cutoff = cutoffs[session]
        for record in _stream(path, torn):
            try:
                if record["event"] == "session" or (cutoff is not None and record.get("step", 0) > cutoff):
                    continue
                last_step = max(last_step, record.get("step", 0))
                if "epoch" in record:
                    tallies.setdefault(record["epoch"], _EpochTally(record["epoch"], resolve)).add(record)
            except KeyError as missing:
                raise AuditLogError(f"{path}: a {record.get('event', 'record')!r} record of step {record.get('step')} "
                                    f"has no {missing} field") from None
    return AuditReport(len(sessions), last_step, [tallies[e].result() for e in sorted(tallies)], sum(torn))


def _stream(path: Path, torn: list[bool]) -> Iterator[dict]:
    """The file's records, frame by frame; a torn last frame (a kill mid-write) is noted in ``torn`` and ignored."""
    with open(path, "rb") as f:
        data = f.read()
    position = 0
    while position < len(data):
        frame = zstandard.ZstdDecompressor().decompressobj()
        try:
            text = frame.decompress(data[position:]).decode()
        except zstandard.ZstdError:
            torn.append(True)
            return
        if not frame.eof:
            torn.append(True)
            return
        position = len(data) - len(frame.unused_data)
        for line in text.splitlines():
            yield json.loads(line)


class _EpochTally:
    """One epoch's accounting, fed record by record.

    An epoch whose data changed at a resume (a ``mixture_change`` record, then a
    plan with another table) is audited in segments: what the first table's
    segment delivered is carried onto the new table by ``data.mixture.carry_over``
    (the loader's own rule), and the new segment must deliver exactly the rest.
    """

    def __init__(self, epoch: int, resolve: DatasetResolver):
        self.audit = EpochAudit(epoch, complete=False)
        self.resolve = resolve
        self.table: EpochTable | None = None
        self.plan: dict | None = None
        self.changed = False  # a mixture_change record awaits its plan
        self.retired: list[dict] = []  # datasets a change took out, with what they delivered (as the loader keeps)
        self.segments: list[tuple[EpochTable, Bitmap]] = []  # each table's samples seen, for the count by id
        self.duplicates: list[int] = []
        self.unknown: list[int] = []

    def add(self, record: dict) -> None:
        event = record["event"]
        if event == "epoch":
            self._plan(record)
        elif event == "mixture_change":
            self.changed = True
        elif event == "epoch_end":
            self.audit.complete = True
        elif self.table is None:
            self.audit.problems.append(f"a {event!r} record before the epoch's plan")
        elif event == "step":
            ids = self._inside(decode_ids(record["ids"]))
            repeated = self.seen.add(ids)
            repeated = np.concatenate([repeated, ids[self.before.has(ids)]])
            self.audit.duplicates += len(repeated)
            self.duplicates += [self.table.describe(i) for i in repeated[: SHOWN - len(self.duplicates)]]
        elif event in self.kinds:
            ids = self._inside(decode_ids(record["ids"]))
            if event == "dropped":
                self._check_dropped(record, ids)
            self.explained.add(ids)
            self.kinds[event].append(ids)

    def _check_dropped(self, record: dict, ids: np.ndarray) -> None:
        """Samples left out to equalize ranks are checked by their ids against the plan they belong to
        (the record's own ``batches`` count is not trusted): none on one rank, and never more than the
        plan's leftover batches can hold. (A resume with fewer ranks may deliver them later, re-planned.)"""
        world, batches, batch_size = self.plan["world_size"], self.plan["batches"], self.plan.get("batch_size")
        problems = self.audit.problems
        if record["world_size"] != world:
            problems.append(f"a 'dropped' record for {record['world_size']} ranks in a plan for {world}")
        if world == 1 and len(ids):
            problems.append(f"{len(ids)} samples recorded as dropped on a one-rank run (one rank never leaves "
                            "batches out)")
        elif batch_size is not None and len(ids) > (batches % world) * batch_size:
            problems.append(f"{len(ids)} samples recorded as dropped, but the plan's {batches % world} leftover "
                            f"batch(es) of at most {batch_size} hold fewer")

    def _plan(self, record: dict) -> None:
        if self.table is not None and record["table"] == self.plan["table"]:
            self.plan = record  # a resume with the same table; duration limits may have changed
            return
        if self.table is not None and not self.changed:
            self.audit.problems.append("the epoch's sample table differs between sessions with no recorded change "
                                       "of the data mixture")
            return
        table = _table(record, self.resolve)
        if table.fingerprint != record["table"]:
            self.audit.problems.append("the epoch's sample table differs from the one the datasets give now")
        before = np.zeros(table.samples, dtype=bool)
        if self.table is not None:
            self._close_segment()
            delivered = SampleSet(self.table.counts, self._delivered())
            carried, self.retired = carry_epoch(Mixture.of(self.table, delivered.per_shard), delivered.to_json(),
                                                self.retired, self.plan["seed"], self.audit.epoch, table)
            before = carried.excluded
            self.audit.left_out += carried.left_out
            self.audit.mixture_changes += 1
        self.table, self.plan, self.changed = table, record, False
        self.audit.samples = table.samples
        self.before = Bitmap.of_mask(before)
        self.seen = Bitmap(table.samples)
        self.explained = Bitmap(table.samples)
        self.kinds = {"dropped": [], "skipped": []}

    def _delivered(self) -> np.ndarray:
        """Which samples of the current table count as delivered (as the loader's state has them)."""
        return (self.seen | self.explained | self.before).mask()

    def _close_segment(self) -> None:
        """Count what the current table's segment delivered."""
        self.segments.append((self.table, self.seen))
        self.audit.seen += self.seen.count()
        for kind, parts in self.kinds.items():
            setattr(self.audit, kind, getattr(self.audit, kind) + (len(np.unique(np.concatenate(parts))) if parts else 0))

    def _inside(self, ids: np.ndarray) -> np.ndarray:
        inside = (ids >= 0) & (ids < self.table.samples)
        self.audit.unknown += int((~inside).sum())
        self.unknown += ids[~inside][: SHOWN - len(self.unknown)].tolist()
        return ids[inside]

    def result(self) -> EpochAudit:
        audit = self.audit
        if self.table is None:
            audit.problems.append("no record of the epoch's plan")
            return audit
        self._close_segment()
        repeated = _repeated(self.segments) if len(self.segments) > 1 else []
        audit.repeated = len(repeated)
        longest = [x for x in (self.plan["max_seconds"], self.plan.get("fill_windows")) if x is not None]
        by_label = self._left_out()
        by_duration = ~inside_limits(self.table.durations, self.plan["min_seconds"], min(longest) if longest else None)
        if by_label is not None:
            by_duration &= ~by_label
            audit.filtered_by_label = int(np.count_nonzero(by_label))
        filtered = Bitmap.of_mask(by_duration if by_label is None else by_duration | by_label)
        audit.filtered = int(np.count_nonzero(by_duration))
        audit.missing, gaps = (self.seen | self.explained | self.before | filtered).missing(SHOWN)
        audit.examples = {
            "duplicate": self.duplicates,
            "missing": [self.table.describe(i) for i in gaps] if audit.complete else [],
            "unknown": [f"sample id {i} of a table of {self.table.samples}" for i in self.unknown],
            "repeated": repeated[:SHOWN],
        }
        return audit

    def _left_out(self) -> np.ndarray | None:
        """By sample id: what the label columns of the epoch's last plan mark keep=false (opened by fingerprint)."""
        named = self.plan.get("left_out_by", [])
        if not named:
            return None
        found = left_out([self.resolve(column["fingerprint"], column["url"]) for column in named])
        if found is None or len(found.columns) != len(named):
            urls = ", ".join(column["url"] for column in named)
            self.audit.problems.append(f"the label columns the plan left samples out by ({urls}) have no keep file now")
            return None
        return per_gid(self.table, [found.mask])


def _repeated(segments: list[tuple[EpochTable, Bitmap]]) -> list[str]:
    """The samples an epoch whose mixture changed delivered more often than any of its tables offers
    them, named with their count. Counted by dataset (fingerprint) and position, independently of
    the carry-over rule, so a flaw in that rule cannot hide a repeat."""
    delivered: dict[str, np.ndarray] = {}
    allowed: dict[str, np.ndarray] = {}
    datasets = {}
    for table, seen in segments:
        seen_mask = seen.mask()
        offered: dict[str, np.ndarray] = {}
        for v in range(len(table.counts)):
            dataset = table.sources[int(table.source[v])].dataset
            fingerprint = dataset.index.fingerprint
            datasets[fingerprint] = dataset
            first = int(dataset.index.shards.offsets[int(table.shard[v])])
            positions = slice(first, first + int(table.counts[v]))
            for counts in (delivered, offered):
                counts.setdefault(fingerprint, np.zeros(dataset.index.samples, dtype=np.int64))
            delivered[fingerprint][positions] += seen_mask[table.offsets[v] : table.offsets[v + 1]]
            offered[fingerprint][positions] += 1
        for fingerprint, counts in offered.items():
            allowed[fingerprint] = np.maximum(allowed.get(fingerprint, counts), counts)
    named = []
    for fingerprint, counts in delivered.items():
        dataset = datasets[fingerprint]
        for position in np.flatnonzero(counts > allowed[fingerprint]).tolist():
            shard = int(np.searchsorted(dataset.index.shards.offsets, position, side="right") - 1)
            named.append(f"{dataset.describe(shard, position - int(dataset.index.shards.offsets[shard]))} delivered "
                         f"{counts[position]} times, at most {allowed[fingerprint][position]} asked")
    return named


def _table(plan: dict, resolve: DatasetResolver) -> EpochTable:
    sources = [DatasetSource(resolve(s["fingerprint"], s["url"]), s["weight"]) for s in plan["sources"]]
    return epoch_table(sources, plan["seed"], plan["epoch"])
