"""streamtrain: a streaming-first trainer for speech models.

The names most users need: ``streamtrain.data.StreamLoader`` and
``merge_states``; ``streamtrain.pack.pack``; ``streamtrain.features``
(``WhisperLogMel``, ``KaldiFbank``, ``SpecAugment``); the ``streamtrain``
command for everything else.
"""

__version__ = "0.1.0"
