"""The loader state: which samples of the current epoch reached the training loop.

In memory it is a boolean mask over the epoch's sample ids plus a delivered
count per shard, kept up to date batch by batch, so that saving costs what
changed: the shards delivered in full become one bit each (a base64 bitmap),
and only the shards delivered in part carry a bitmap of their samples. A state
also remembers the schedule it was made under (batch settings, ranks, workers,
and the samples already excluded when that schedule was planned), so that a
run resumed with the same settings continues with exactly the batches it would
have produced; with other settings the remaining samples are re-planned, still
exactly once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

import numpy as np

from streamtrain.loader.bitmap import Bitmap
from streamtrain.format.index import sample_offsets

STATE_FORMAT = "streamtrain-loader-state"
STATE_VERSION = 2


class LoaderStateError(ValueError):
    """A state that cannot be loaded into this loader."""


@runtime_checkable
class Stateful(Protocol):
    """A piece of a run that a checkpoint holds as plain data (the loader, the trainer's counters).

    ``state_dict()`` returns JSON values only (dicts with string keys, lists, strings, numbers,
    booleans, None), so a checkpoint's ``trainer.json`` can be read with ``python -m json.tool``;
    ``load_state_dict(state)`` takes what ``state_dict()`` returned, possibly after a JSON round trip,
    and continues from there. (Model, optimizer, scheduler and scaler are torch's own, with tensors.)
    """

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def encode_bits(bits: np.ndarray) -> str:
    return Bitmap.of_mask(bits).to_text()


def decode_bits(text: str, count: int) -> np.ndarray:
    return Bitmap.from_text(text, count).mask()


class SampleSet:
    """A set of an epoch's sample ids, with a count per shard that makes its JSON cheap.

    JSON: ``{"done": bitmap of the shards held in full,
    "partial": {shard: [samples in it, bitmap of them]}}``.
    """

    def __init__(self, counts: np.ndarray, mask: np.ndarray | None = None):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = sample_offsets(self.counts)
        self.mask = np.zeros(int(self.offsets[-1]), dtype=bool) if mask is None else mask
        self.per_shard = np.zeros(len(self.counts), dtype=np.int64)
        filled = np.flatnonzero(self.counts)
        if len(filled):
            self.per_shard[filled] = np.add.reduceat(self.mask, self.offsets[filled], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.per_shard.sum())

    def add(self, gids: np.ndarray) -> None:
        gids = np.unique(np.asarray(gids, dtype=np.int64))
        new = gids[~self.mask[gids]]
        self.mask[new] = True
        np.add.at(self.per_shard, np.searchsorted(self.offsets, new, side="right") - 1, 1)

    def to_json(self) -> dict:
        done = self.per_shard == self.counts
        partial = np.flatnonzero(~done & (self.per_shard > 0))
        return {
            "done": encode_bits(done),
            "partial": {
                str(s): [int(self.counts[s]), encode_bits(self.mask[self.offsets[s] : self.offsets[s + 1]])]
                for s in partial.tolist()
            },
        }

    @classmethod
    def from_json(cls, data: dict, counts: np.ndarray) -> "SampleSet":
        counts = np.asarray(counts, dtype=np.int64)
        try:
            done = decode_bits(data["done"], len(counts))
            mask = np.repeat(done, counts)
            offsets = sample_offsets(counts)
            for shard, (count, bits) in data["partial"].items():
                shard = int(shard)
                if not 0 <= shard < len(counts) or count != counts[shard]:
                    raise ValueError(f"shard {shard} does not have {count} samples in this epoch's table")
                mask[offsets[shard] : offsets[shard + 1]] |= decode_bits(bits, count)
        except (KeyError, IndexError, ValueError, TypeError) as error:
            raise LoaderStateError(f"malformed sample set in loader state: {error}") from error
        return cls(counts, mask)


@dataclass
class Schedule:
    """What the epoch's remaining batches were planned from."""

    settings: dict  # BatchSettings.to_json() + world_size + num_workers + equalize_ranks
    excluded: SampleSet  # samples already delivered when the schedule was planned (it never changes)

    def to_json(self) -> dict:
        return {"settings": self.settings, "base": self.excluded_json}  # "base": the key of state version 2

    @cached_property
    def excluded_json(self) -> dict:
        """Encoded once: the excluded set never changes while the schedule lives."""
        return self.excluded.to_json()


@dataclass
class LoaderState:
    seed: int
    epoch: int
    fingerprint: str  # of the epoch's sample table; a mismatch means other data
    delivered: SampleSet
    schedule: Schedule | None = None
    counters: dict[str, int] = field(default_factory=dict)
    #: datasets removed from the mixture earlier in this epoch, with what they delivered
    #: (``loader.mixture.carry_epoch``), so that adding one back does not repeat it
    retired: list[dict] = field(default_factory=list)

    def to_json(self, mixture: list[dict], limits: list[float | None]) -> dict:
        """``mixture``: the epoch table's datasets, weights and progress (``data.mixture.Mixture``);
        ``limits``: the duration limits (min_seconds, max_seconds) the epoch is planned with."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self.epoch,
            "fingerprint": self.fingerprint,
            "mixture": mixture,
            "limits": limits,
            "samples": len(self.delivered.mask),
            "shards": len(self.delivered.counts),
            "delivered": self.delivered.to_json(),
            "schedule": None if self.schedule is None else self.schedule.to_json(),
            "counters": dict(self.counters),
            "retired": self.retired,
        }

    @classmethod
    def from_json(cls, data: dict, counts_for_epoch) -> "LoaderState":
        """``counts_for_epoch(epoch)`` gives the shard sample counts of that epoch's table."""
        check_header(data)
        counts = counts_for_epoch(int(data["epoch"]))
        schedule = data.get("schedule")
        return cls(
            seed=int(data["seed"]),
            epoch=int(data["epoch"]),
            fingerprint=data["fingerprint"],
            delivered=SampleSet.from_json(data["delivered"], counts),
            schedule=None if schedule is None else Schedule(schedule["settings"],
                                                            SampleSet.from_json(schedule["base"], counts)),
            counters={k: int(v) for k, v in data.get("counters", {}).items()},
            retired=list(data.get("retired", [])),
        )


def check_header(data: dict) -> None:
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise LoaderStateError("not a streamtrain loader state (field 'format')")
    if data.get("version") != STATE_VERSION:
        raise LoaderStateError(
            f"loader state version {data.get('version')!r} is not supported (this streamtrain reads {STATE_VERSION})"
        )


def merge_states(states: list[dict]) -> dict:
    """Merge the states of all ranks into one that any rank of any world size can load.

    Delivered samples are the union over ranks; counters and each dataset's
    delivered count add up; the schedule is kept only if every rank planned the
    same one. Costs O(shards / 8 + the shards delivered in part), vectorised.
    """
    if not states:
        raise LoaderStateError("merge_states needs at least one state")
    first = states[0]
    for state in states:
        check_header(state)
    for other in states[1:]:
        for name in ("seed", "epoch", "fingerprint", "samples", "shards", "retired"):
            if other.get(name) != first.get(name):
                raise LoaderStateError(
                    f"cannot merge loader states that differ in {name!r}: {first.get(name)!r} != {other.get(name)!r}"
                )
    schedules = {json.dumps(s["schedule"], sort_keys=True) for s in states}
    counters: dict[str, int] = {}
    for state in states:
        for key, value in state.get("counters", {}).items():
            counters[key] = counters.get(key, 0) + int(value)
    return {
        **first,
        "mixture": _merge_mixtures([s["mixture"] for s in states]),
        "delivered": _merge_sets([s["delivered"] for s in states], first["shards"]),
        "schedule": first["schedule"] if len(schedules) == 1 else None,
        "counters": counters,
    }


def _merge_mixtures(mixtures: list[list[dict]]) -> list[dict]:
    merged = [dict(source) for source in mixtures[0]]
    for other in mixtures[1:]:
        if [{**s, "delivered": 0} for s in other] != [{**s, "delivered": 0} for s in merged]:
            raise LoaderStateError("cannot merge loader states of different data mixtures")
        for source, theirs in zip(merged, other):
            source["delivered"] += theirs["delivered"]
    return merged


def _merge_sets(sets: list[dict], shards: int) -> dict:
    try:
        done = np.zeros(shards, dtype=bool)
        for entry in sets:
            done |= decode_bits(entry["done"], shards)
        partial: dict[int, tuple[int, np.ndarray]] = {}
        for entry in sets:
            for shard, (count, bits) in entry["partial"].items():
                shard = int(shard)
                if done[shard]:
                    continue
                previous = partial.get(shard, (count, np.zeros(count, dtype=bool)))[1]
                partial[shard] = (count, previous | decode_bits(bits, count))
    except (KeyError, IndexError, ValueError, TypeError) as error:
        raise LoaderStateError(f"malformed sample set in loader state: {error}") from error
    encoded = {}
    for shard, (count, bits) in sorted(partial.items()):
        if bits.all():
            done[shard] = True
        else:
            encoded[str(shard)] = [count, encode_bits(bits)]
    return {"done": encode_bits(done), "partial": encoded}
