"""``make_student``: a smaller decoder initialised from the teacher (Distil-Whisper style).

The encoder and the embeddings are copied as they are; the student keeps
``decoder_layers`` of the teacher's decoder layers: the first and the last for
two, evenly spaced (first and last included) for more, the first for one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def chosen_layers(teacher_layers: int, student_layers: int) -> list[int]:
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"decoder layers must be in 1..{teacher_layers}, got {student_layers}")
    if student_layers == 1:
        return [0]
    return [int(round(x)) for x in np.linspace(0, teacher_layers - 1, student_layers)]


def make_student(teacher_dir: str | Path, decoder_layers: int, out_dir: str | Path) -> list[int]:
    """Write the student (Hugging Face format, with the teacher's tokenizer files) to ``out_dir``."""
    from transformers import WhisperForConditionalGeneration

    teacher = WhisperForConditionalGeneration.from_pretrained(teacher_dir)
    layers = chosen_layers(teacher.config.decoder_layers, decoder_layers)
    config = teacher.config.__class__.from_dict({**teacher.config.to_dict(), "decoder_layers": decoder_layers})
    student = WhisperForConditionalGeneration(config)
    state = teacher.state_dict()
    student_state = student.state_dict()
    prefix = "model.decoder.layers."
    for name in student_state:
        if name.startswith(prefix):
            index, rest = name[len(prefix) :].split(".", 1)
            student_state[name] = state[f"{prefix}{layers[int(index)]}.{rest}"]
        else:
            student_state[name] = state[name]
    student.load_state_dict(student_state)
    student.generation_config = teacher.generation_config  # languages, tasks, timestamps, suppressed tokens
    if hasattr(student.generation_config, "alignment_heads"):  # the teacher's layers: the student's default instead
        del student.generation_config.alignment_heads
    out = Path(out_dir)
    student.save_pretrained(out)
    for extra in Path(teacher_dir).iterdir():  # tokenizer, feature extractor, streamtrain.json
        if extra.is_file() and not (out / extra.name).exists() and extra.suffix in (".json", ".txt", ".model", ".tiktoken"):
            shutil.copy(extra, out / extra.name)
    return layers
