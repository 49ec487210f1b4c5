"""Streaming, batching and the resumable loader state."""

from streamtrain.loader.batch import Batch
from streamtrain.loader.stream_loader import EmptyEpochError, StreamLoader, Topology, WorkerSettings
from streamtrain.format.shard_reader import ReadSettings
from streamtrain.loader.state import LoaderStateError, merge_states
from streamtrain.loader.plan import BatchSettings
from streamtrain.storage.remote import RetryPolicy

__all__ = ["Batch", "BatchSettings", "EmptyEpochError", "LoaderStateError", "ReadSettings", "RetryPolicy",
           "StreamLoader", "Topology", "WorkerSettings", "merge_states"]
