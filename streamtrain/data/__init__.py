"""Streaming, batching and the resumable loader state."""

from streamtrain.data.batch import Batch
from streamtrain.data.loader import StreamLoader
from streamtrain.storage.remote import RetryPolicy
from streamtrain.data.state import LoaderStateError, merge_states

__all__ = ["Batch", "LoaderStateError", "RetryPolicy", "StreamLoader", "merge_states"]
