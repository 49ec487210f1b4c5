"""Featurizers that run on the device: Whisper log-mel, Kaldi fbank, CMVN, SpecAugment.

Each featurizer is an ``nn.Module``: ``featurizer(audio, lengths) -> (features,
frame_lengths)`` on whatever device the batch is on, float32 even under autocast.
"""

from streamtrain.features.cmvn import GlobalCMVN, compute_cmvn_stats
from streamtrain.format.feature_codec import decode_features, encode_features
from streamtrain.features.kaldi import KaldiFbank
from streamtrain.features.registry import (
    FEATURIZER_VERSION,
    FEATURIZERS,
    build_featurizer,
    featurizer_fingerprint,
)
from streamtrain.features.specaugment import SpecAugment, generator_for_step
from streamtrain.features.whisper import WhisperLogMel

__all__ = [
    "FEATURIZERS",
    "FEATURIZER_VERSION",
    "GlobalCMVN",
    "KaldiFbank",
    "SpecAugment",
    "WhisperLogMel",
    "build_featurizer",
    "compute_cmvn_stats",
    "decode_features",
    "encode_features",
    "featurizer_fingerprint",
    "generator_for_step",
]
