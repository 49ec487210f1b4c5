import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
#: Scripts that tests start in processes of their own import the helpers in tests/support too.
REPO = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


@pytest.fixture(scope="session")
def whisper_tiny(tmp_path_factory):
    """A random whisper-tiny of the published architecture and tokenizer (``init-model``), made once for
    every test that fine-tunes or distils one; tests only read it."""
    from streamtrain.train.init_model import init_model

    out = tmp_path_factory.mktemp("whisper-tiny") / "model"
    init_model("whisper-tiny", out)
    return out


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    """Spoken digits packed once for the session (espeak-ng, seeded): 56 training utterances in several shards
    and 12 validation ones, for the tests that train the micro recipe; tests only read them."""
    from tests.support.runs import digit_dataset

    root = tmp_path_factory.mktemp("digits")
    return digit_dataset(root / "train", 56, seed=1), digit_dataset(root / "validation", 12, seed=2)
