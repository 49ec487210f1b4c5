"""streamtrain: a streaming-first trainer for speech models.

The names users import come from here and stay here through any move inside the
package::

    from streamtrain import StreamLoader, merge_states, RetryPolicy, BatchSettings
    from streamtrain import WhisperLogMel, KaldiFbank, SpecAugment, pack

They are loaded on first use (PEP 562), so ``import streamtrain`` and the
``streamtrain`` command stay light: a command imports only what it runs.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "StreamLoader": "streamtrain.loader.stream_loader",
    "Topology": "streamtrain.loader.stream_loader",
    "WorkerSettings": "streamtrain.loader.stream_loader",
    "EmptyEpochError": "streamtrain.loader.stream_loader",
    "Batch": "streamtrain.loader.batch",
    "BatchSettings": "streamtrain.loader.plan",
    "merge_states": "streamtrain.loader.state",
    "LoaderStateError": "streamtrain.loader.state",
    "Stateful": "streamtrain.loader.state",
    "ReadSettings": "streamtrain.format.shard_reader",
    "RetryPolicy": "streamtrain.storage.remote",
    "WhisperLogMel": "streamtrain.features.whisper",
    "KaldiFbank": "streamtrain.features.kaldi",
    "SpecAugment": "streamtrain.features.specaugment",
    "GlobalCMVN": "streamtrain.features.cmvn",
    "pack": "streamtrain.pack.packer",
    "merge": "streamtrain.pack.packer",
    "open_dataset": "streamtrain.format.dataset",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'streamtrain' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
