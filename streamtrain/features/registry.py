"""Featurizers by name, and the fingerprint that keys cached features.

A featurizer is an ``nn.Module`` called as ``featurizer(audio, lengths)`` (B x T
zero-padded audio, B lengths) returning ``(features, frame_lengths)``, with a
``time_dim`` attribute and a ``config()`` dict of its constructor arguments.
"""

from __future__ import annotations

import hashlib
import inspect
import json

from torch import nn

from streamtrain.features.kaldi import KaldiFbank
from streamtrain.features.whisper import WhisperLogMel

#: Bumped whenever a featurizer's numbers change for the same config, which
#: invalidates every cached feature column.
FEATURIZER_VERSION = 1

FEATURIZERS: dict[str, type[nn.Module]] = {
    "whisper_log_mel": WhisperLogMel,
    "kaldi_fbank": KaldiFbank,
}


def build_featurizer(name: str, **params) -> nn.Module:
    """The featurizer called ``name`` in FEATURIZERS, built from keyword parameters.

    An unknown name or parameter is a ValueError that names it.
    """
    if name not in FEATURIZERS:
        raise ValueError(f"unknown featurizer {name!r}; expected one of {sorted(FEATURIZERS)}")
    cls = FEATURIZERS[name]
    accepted = list(inspect.signature(cls).parameters)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for featurizer {name!r}; it accepts {accepted}")
    return cls(**params)


def featurizer_fingerprint(featurizer: nn.Module) -> str:
    """sha256 hex of the canonical JSON of the class name, ``config()`` and FEATURIZER_VERSION."""
    payload = {
        "featurizer": type(featurizer).__name__,
        "config": featurizer.config(),
        "version": FEATURIZER_VERSION,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
