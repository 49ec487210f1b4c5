import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.support.speech import espeak_available, speech_of_duration  # noqa: E402

#: Durations the Whisper comparison covers: short, just under, exactly and over 30 s.
DURATIONS = (1.0, 29.99, 30.0, 45.0)


@pytest.fixture(scope="session")
def speech() -> dict[float, np.ndarray]:
    """Real espeak-ng speech at 16 kHz, by duration in seconds (each from its own seed)."""
    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    return {seconds: speech_of_duration(seconds, seed=seed) for seed, seconds in enumerate(DURATIONS)}
