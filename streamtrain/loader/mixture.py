"""Changing the data mixture at a resume, without replaying or repeating what the epoch delivered.

A loader state records the mixture its epoch table was made of: each dataset
by *fingerprint* (what it holds, not where it lives), its weight and shard count,
and the duration limits. When a loader with another mixture loads it, the epoch
goes on under the new mixture:

- samples are matched across the two mixtures as (dataset, position, pass):
  a weight w gives each sample w passes (``copy`` 0 .. w-1; a fractional part
  adds one more pass to a window of the shards, epoch by epoch);
- a pass delivered before the change is not delivered again: the new table
  excludes the same pass where it has it. Passes delivered beyond what the new
  mixture wants for a sample (its weight was lowered) use up its lowest passes
  not yet delivered; passes the new mixture adds (a weight raised, a dataset
  added) are delivered in the rest of the epoch. So within the epoch a sample is
  delivered max(before, wanted) times: never again what was trained on, and
  repeats only where a weight above 1 asks for them;
- samples of the old table that the new mixture no longer wants in this epoch
  (a dataset removed, a weight lowered, a window moved) are *left out by the
  change*, and counted as such;
- a dataset removed keeps, in the state, what it delivered in the epoch (its
  *retired* entry, by fingerprint), until the epoch ends: added back in the same
  epoch, it does not deliver those samples again (``carry_epoch``).

The same function serves the loader (what to exclude) and the audit (what the
epoch should then hold), so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streamtrain.loader.bitmap import Bitmap
from streamtrain.loader.dataset_sources import EpochTable, virtual_shards
from streamtrain.loader.state import decode_bits, encode_bits


@dataclass(frozen=True)
class MixtureSource:
    fingerprint: str
    weight: float
    shards: int
    url: str  # as shown: no credentials, no query
    samples: int = 0  # this source's samples in the epoch's table (passes counted)
    delivered: int = 0  # of those, delivered so far in the epoch

    def to_json(self) -> dict:
        return {"fingerprint": self.fingerprint, "weight": self.weight, "shards": self.shards, "url": self.url,
                "samples": self.samples, "delivered": self.delivered}

    @classmethod
    def from_json(cls, d: dict) -> "MixtureSource":
        return cls(d["fingerprint"], float(d["weight"]), int(d["shards"]), d["url"], int(d.get("samples", 0)),
                   int(d.get("delivered", 0)))


@dataclass(frozen=True)
class Mixture:
    """What an epoch table is made of (and, in a saved state, how far the epoch got in each dataset)."""

    sources: tuple[MixtureSource, ...]

    @classmethod
    def of(cls, table: EpochTable, delivered_per_shard: np.ndarray | None = None) -> "Mixture":
        per_source = np.bincount(table.source, weights=table.counts, minlength=len(table.sources))
        done = np.zeros(len(table.sources)) if delivered_per_shard is None else \
            np.bincount(table.source, weights=delivered_per_shard, minlength=len(table.sources))
        return cls(tuple(MixtureSource(s.index.fingerprint, s.weight, len(s.index.shards), s.display,
                                       int(per_source[i]), int(done[i])) for i, s in enumerate(table.sources)))

    @classmethod
    def from_json(cls, data: list[dict]) -> "Mixture":
        return cls(tuple(MixtureSource.from_json(d) for d in data))

    def to_json(self) -> list[dict]:
        return [source.to_json() for source in self.sources]

    def same_as(self, other: "Mixture") -> bool:
        """The same datasets with the same weights, in the same order (progress aside)."""
        return [(s.fingerprint, s.weight) for s in self.sources] == [(s.fingerprint, s.weight) for s in other.sources]

    def changes_to(self, other: "Mixture") -> dict[str, list]:
        """Datasets added, removed and re-weighted (by fingerprint), in plain JSON."""
        before = {s.fingerprint: s for s in self.sources}
        after = {s.fingerprint: s for s in other.sources}
        return {
            "added": [after[f].to_json() for f in after if f not in before],
            "removed": [before[f].to_json() for f in before if f not in after],
            "reweighted": [{"url": after[f].url, "fingerprint": f, "from": before[f].weight, "to": after[f].weight}
                           for f in after if f in before and before[f].weight != after[f].weight],
        }


@dataclass(frozen=True)
class CarryOver:
    excluded: np.ndarray  # bool, by the new table's ids: passes delivered before the change (not to redo)
    delivered_before: int  # passes the epoch delivered before the change
    newly_in: int  # passes the new mixture offers that the old one did not
    left_out: int  # passes the old mixture offered, not delivered, that the new one does not


DeliveredBits = Callable[[int, int], np.ndarray]  # (old virtual shard, its samples) -> which were delivered


def carry_over(old: Mixture, delivered: DeliveredBits, seed: int, epoch: int, new: EpochTable) -> CarryOver:
    """Map what an epoch delivered under ``old`` onto the table ``new`` of the same epoch."""
    old_source, old_shard, old_copy = virtual_shards(
        [s.shards for s in old.sources], [s.weight for s in old.sources], [s.fingerprint for s in old.sources],
        seed, epoch)
    indexes = {s.index.fingerprint: s.index for s in new.sources}
    taken = {f: np.zeros(index.samples, dtype=np.uint64) for f, index in indexes.items()}  # delivered passes
    offered_before = {f: np.zeros(index.samples, dtype=np.uint64) for f, index in indexes.items()}
    for v in range(len(old_shard)):
        fingerprint = old.sources[old_source[v]].fingerprint
        if fingerprint in indexes:
            positions, count = _positions(indexes[fingerprint], old_shard[v])
            flag = np.uint64(1) << np.uint64(old_copy[v])
            taken[fingerprint][positions][delivered(v, count)] |= flag
            offered_before[fingerprint][positions] |= flag
    offered = {f: np.zeros(len(p), dtype=np.uint64) for f, p in taken.items()}
    for v in range(len(new.counts)):
        index = new.sources[new.source[v]].index
        offered[index.fingerprint][_positions(index, new.shard[v])[0]] |= np.uint64(1) << np.uint64(new.copy[v])
    excluded = np.zeros(new.samples, dtype=bool)
    for v in range(len(new.counts)):
        index = new.sources[new.source[v]].index
        positions = _positions(index, new.shard[v])[0]
        excluded[new.offsets[v] : new.offsets[v + 1]] = _pass_taken(
            taken[index.fingerprint][positions], offered[index.fingerprint][positions], int(new.copy[v]))
    removed = [s for s in old.sources if s.fingerprint not in indexes]
    return CarryOver(
        excluded,
        delivered_before=int(sum(np.bitwise_count(p).sum() for p in taken.values()))
        + sum(s.delivered for s in removed),
        newly_in=int(sum(np.bitwise_count(offered[f] & ~offered_before[f]).sum() for f in offered)),
        left_out=int(sum(np.bitwise_count(offered_before[f] & ~offered[f] & ~taken[f]).sum() for f in offered))
        + sum(s.samples - s.delivered for s in removed),
    )


def carry_epoch(old: Mixture, delivered: dict, retired: list[dict], seed: int, epoch: int, new: EpochTable
                ) -> tuple[CarryOver, list[dict]]:
    """``carry_over`` of a loader state's JSON, with the datasets retired earlier in the epoch: those the
    new mixture has again count with what they delivered before they were removed.

    ``delivered``: the state's ``delivered`` (``loader.state.SampleSet`` JSON over ``old``'s table);
    ``retired``: its ``retired`` entries. Returns the carry-over and the new ``retired`` entries: the
    earlier ones still out of the mixture, and ``old``'s datasets the new mixture leaves out, each
    ``MixtureSource`` JSON + ``passes`` (SampleSet JSON over that dataset's own virtual shards).
    """
    wanted = {s.index.fingerprint for s in new.sources}
    present = {s.fingerprint for s in old.sources}
    returning = [r for r in retired if r["fingerprint"] in wanted and r["fingerprint"] not in present]
    parts = [(delivered, _virtual_count(old, seed, epoch))]
    parts += [(r["passes"], _virtual_count(Mixture((MixtureSource.from_json(r),)), seed, epoch)) for r in returning]
    extended = Mixture(old.sources + tuple(MixtureSource.from_json(r) for r in returning))
    carried = carry_over(extended, _parts_bits(parts), seed, epoch, new)
    source_of = virtual_shards([s.shards for s in old.sources], [s.weight for s in old.sources],
                               [s.fingerprint for s in old.sources], seed, epoch)[0]
    leaving = [_retire(s, np.flatnonzero(source_of == i), delivered, len(source_of))
               for i, s in enumerate(old.sources) if s.fingerprint not in wanted]
    return carried, [r for r in retired if r["fingerprint"] not in wanted] + leaving


def _virtual_count(mixture: Mixture, seed: int, epoch: int) -> int:
    return len(virtual_shards([s.shards for s in mixture.sources], [s.weight for s in mixture.sources],
                              [s.fingerprint for s in mixture.sources], seed, epoch)[0])


def _parts_bits(parts: list[tuple[dict, int]]) -> DeliveredBits:
    """``DeliveredBits`` over consecutive ranges of virtual shards, each given as SampleSet JSON."""
    done, partial, first = [], {}, 0
    for delivered, count in parts:
        done.append(Bitmap.from_text(delivered["done"], count).mask())
        partial.update({first + int(v): bits for v, (_, bits) in delivered["partial"].items()})
        first += count
    done_all = np.concatenate(done) if done else np.zeros(0, dtype=bool)

    def bits(virtual: int, count: int) -> np.ndarray:
        if virtual in partial:
            return decode_bits(partial[virtual], count)
        return np.full(count, bool(done_all[virtual]))

    return bits


def _retire(source: MixtureSource, virtual: np.ndarray, delivered: dict, total: int) -> dict:
    """The retired entry of ``source``, whose virtual shards are ``virtual`` (a range) of a table of ``total``."""
    first, end = (int(virtual[0]), int(virtual[-1]) + 1) if len(virtual) else (0, 0)
    done = Bitmap.from_text(delivered["done"], total).mask()[first:end]
    partial = {str(int(v) - first): entry for v, entry in delivered["partial"].items() if first <= int(v) < end}
    return {**source.to_json(), "passes": {"done": encode_bits(done), "partial": partial}}


def _positions(index, shard: int) -> tuple[slice, int]:
    first, count = int(index.shards.offsets[shard]), int(index.shards.samples[shard])
    return slice(first, first + count), count


def _pass_taken(done: np.ndarray, offered: np.ndarray, copy: int) -> np.ndarray:
    """Whether pass ``copy`` of each sample counts as delivered: delivered itself, or used up by a
    delivered pass the new mixture no longer offers (those use the lowest free passes first)."""
    bit = np.uint64(1) << np.uint64(copy)
    itself = (done & bit) != 0
    surplus = np.bitwise_count(done & ~offered)
    lower_free = np.bitwise_count(offered & ~done & (bit - np.uint64(1)))
    return itself | (((offered & ~done & bit) != 0) & (lower_free < surplus))


def describe_change(change: dict) -> str:
    """The ``mixture_change`` event as one readable block for the log."""
    lines = [f"the training data changed at this resume, in epoch {change['epoch']}:"]
    lines += [f"  added      {s['url']} (weight {s['weight']:g}, fingerprint {s['fingerprint']})" for s in change["added"]]
    lines += [f"  removed    {s['url']} (weight {s['weight']:g}, fingerprint {s['fingerprint']})"
              for s in change["removed"]]
    lines += [f"  reweighted {s['url']}: {s['from']:g} -> {s['to']:g}" for s in change["reweighted"]]
    if change["limits"]:
        limits = change["limits"]
        lines.append(f"  duration limits (min_seconds, max_seconds) {tuple(limits['from'])} -> {tuple(limits['to'])}: "
                     f"{limits['newly_in']} samples not yet delivered come in, {limits['newly_out']} go out")
    if "delivered_before" not in change:
        return "\n".join(lines)
    lines.append(f"  this epoch: {change['delivered_before']} samples delivered before the change are not repeated; "
                 f"{change['newly_in']} samples come in with the new mixture, {change['left_out']} not yet delivered "
                 "are left out of it")
    return "\n".join(lines)
