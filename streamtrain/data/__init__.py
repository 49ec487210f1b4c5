"""Streaming, batching and the resumable loader state."""

from streamtrain.data.batch import Batch
from streamtrain.data.loader import EmptyEpochError, StreamLoader, Topology, WorkerSettings
from streamtrain.data.shards import ReadSettings
from streamtrain.data.state import LoaderStateError, merge_states
from streamtrain.plan import BatchSettings
from streamtrain.storage.remote import RetryPolicy

__all__ = ["Batch", "BatchSettings", "EmptyEpochError", "LoaderStateError", "ReadSettings", "RetryPolicy",
           "StreamLoader", "Topology", "WorkerSettings", "merge_states"]
