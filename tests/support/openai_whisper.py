"""openai-whisper's own tokenizer: the reference the published Whisper ids are checked against.

``scripts/setup.sh`` installs openai-whisper with ``--no-deps`` for its tokenizer
files, so its package ``__init__`` (which needs numba) cannot be imported; the
tokenizer module needs only tiktoken and is loaded from its file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def openai_whisper_tokenizer(multilingual: bool, num_languages: int):
    """``whisper.tokenizer.get_tokenizer(multilingual, num_languages=...)``."""
    path = Path(importlib.util.find_spec("whisper").origin).with_name("tokenizer.py")
    spec = importlib.util.spec_from_file_location("openai_whisper_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_tokenizer(multilingual, num_languages=num_languages)
