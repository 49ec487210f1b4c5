"""The loader state: which samples of the current epoch reached the training loop.

In memory it is a boolean mask over the epoch's sample ids. As JSON it is
compact: the shards whose samples were all delivered, as ranges, and a bitmap
(base64) for each shard delivered in part. A state also remembers the schedule
it was made under (batch settings, ranks, workers, and the samples already
excluded when that schedule was planned), so that a run resumed with the same
settings continues with exactly the batches it would have produced; with other
settings the remaining samples are re-planned, still exactly once.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

STATE_FORMAT = "streamtrain-loader-state"
STATE_VERSION = 1


class LoaderStateError(ValueError):
    """A state that cannot be loaded into this loader."""


@dataclass
class Schedule:
    """What the epoch's remaining batches were planned from."""

    settings: dict  # BatchSettings.to_json() + world_size + num_workers
    base: np.ndarray  # bool mask: samples excluded when the schedule was planned

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Schedule)
            and self.settings == other.settings
            and np.array_equal(self.base, other.base)
        )


@dataclass
class LoaderState:
    seed: int
    epoch: int
    fingerprint: str  # of the epoch's sample table; a mismatch means another dataset
    delivered: np.ndarray  # bool mask by sample id
    schedule: Schedule | None = None
    counters: dict[str, int] = field(default_factory=dict)

    def to_json(self, counts: np.ndarray) -> dict:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self.epoch,
            "fingerprint": self.fingerprint,
            "samples": int(len(self.delivered)),
            "delivered": encode_mask(self.delivered, counts),
            "schedule": None
            if self.schedule is None
            else {"settings": self.schedule.settings, "base": encode_mask(self.schedule.base, counts)},
            "counters": dict(self.counters),
        }

    @classmethod
    def from_json(cls, data: dict, counts_for_epoch) -> "LoaderState":
        """``counts_for_epoch(epoch)`` gives the shard sample counts of that epoch's table."""
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise LoaderStateError("not a streamtrain loader state (field 'format')")
        if data.get("version") != STATE_VERSION:
            raise LoaderStateError(f"loader state version {data.get('version')!r} is not supported")
        counts = counts_for_epoch(int(data["epoch"]))
        schedule = data.get("schedule")
        return cls(
            seed=int(data["seed"]),
            epoch=int(data["epoch"]),
            fingerprint=data["fingerprint"],
            delivered=decode_mask(data["delivered"], counts),
            schedule=None
            if schedule is None
            else Schedule(schedule["settings"], decode_mask(schedule["base"], counts)),
            counters={k: int(v) for k, v in data.get("counters", {}).items()},
        )


def table_fingerprint(names: list[str], counts: np.ndarray) -> str:
    digest = hashlib.sha256()
    for name, count in zip(names, counts.tolist()):
        digest.update(f"{name}\0{count}\n".encode())
    return digest.hexdigest()[:16]


def encode_mask(mask: np.ndarray, counts: np.ndarray) -> dict:
    """{"done": [[first, last + 1], ...] shard ranges, "partial": {shard: [count, base64 bits]}}."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    done_shards, partial = [], {}
    for shard in range(len(counts)):
        bits = mask[offsets[shard] : offsets[shard + 1]]
        if len(bits) and bits.all():
            done_shards.append(shard)
        elif bits.any():
            partial[str(shard)] = [len(bits), base64.b64encode(np.packbits(bits).tobytes()).decode()]
    return {"done": _ranges(done_shards), "partial": partial}


def decode_mask(data: dict, counts: np.ndarray) -> np.ndarray:
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    mask = np.zeros(int(offsets[-1]), dtype=bool)
    try:
        for first, end in data["done"]:
            mask[offsets[first] : offsets[end]] = True
        for shard, (count, bits) in data["partial"].items():
            shard = int(shard)
            if count != counts[shard]:
                raise ValueError(f"shard {shard} has {counts[shard]} samples, the state says {count}")
            mask[offsets[shard] : offsets[shard + 1]] = _unpack(bits, count)
    except (KeyError, IndexError, ValueError, TypeError) as error:
        raise LoaderStateError(f"malformed sample mask in loader state: {error}") from error
    return mask


def merge_states(states: list[dict]) -> dict:
    """Merge the states of all ranks into one that any rank of any world size can load.

    Delivered samples are the union over ranks; counters add up; the schedule
    is kept only if every rank planned the same one.
    """
    if not states:
        raise LoaderStateError("merge_states needs at least one state")
    first = states[0]
    for other in states[1:]:
        for name in ("format", "version", "seed", "epoch", "fingerprint", "samples"):
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
        "delivered": _merge_masks([s["delivered"] for s in states]),
        "schedule": first["schedule"] if len(schedules) == 1 else None,
        "counters": counters,
    }


def _merge_masks(masks: list[dict]) -> dict:
    done = {shard for mask in masks for first, end in mask["done"] for shard in range(first, end)}
    partial: dict[int, tuple[int, np.ndarray]] = {}
    for mask in masks:
        for shard, (count, bits) in mask["partial"].items():
            shard = int(shard)
            if shard in done:
                continue
            previous = partial.get(shard, (count, np.zeros(count, dtype=bool)))[1]
            partial[shard] = (count, previous | _unpack(bits, count))
    encoded = {}
    for shard, (count, bits) in sorted(partial.items()):
        if bits.all():
            done.add(shard)
        else:
            encoded[str(shard)] = [count, base64.b64encode(np.packbits(bits).tobytes()).decode()]
    return {"done": _ranges(sorted(done)), "partial": encoded}


def _unpack(bits: str, count: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(bits), dtype=np.uint8), count=count).astype(bool)


def _ranges(sorted_shards: list[int]) -> list[list[int]]:
    ranges: list[list[int]] = []
    for shard in sorted_shards:
        if ranges and ranges[-1][1] == shard:
            ranges[-1][1] = shard + 1
        else:
            ranges.append([shard, shard + 1])
    return ranges
