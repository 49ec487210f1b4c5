"""Every rank of one loader run, in this process: how the loader tests check exactly-once across topologies."""

from __future__ import annotations

import json

from streamtrain import StreamLoader, merge_states


def run_ranks(data, state: dict | None, world: int, stop_after: int | None = None, **settings):
    """Every rank of ``data`` (a dataset or a mixture) to the end of the epoch it starts in, or to
    ``stop_after`` batches a rank: the delivered keys, the merged state, the events, the last loader.
    ``state`` (None: a fresh run) is loaded through JSON, as a checkpoint would hand it back."""
    keys, states, events = [], [], []
    for rank in range(world):
        loader = StreamLoader(data, rank=rank, world_size=world, epochs=1 if state is None else state["epoch"] + 1,
                              **settings)
        if state is not None:
            loader.load_state_dict(json.loads(json.dumps(state)))
        for number, batch in enumerate(loader, start=1):
            keys += batch.keys
            if number == stop_after:
                break
        states.append(loader.state_dict())
        events += loader.pop_events()
    return keys, merge_states(states), events, loader
