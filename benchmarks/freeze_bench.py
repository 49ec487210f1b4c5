"""Distillation step time with the student's encoder training, frozen, and frozen and shared with the teacher.

    python benchmarks/freeze_bench.py [--arch whisper-tiny] [--batch 2] [--steps 5] [--json]

A random teacher of a published architecture (``init-model``) and a 2-decoder-
layer student made from it (``make-student``); each step is what the trainer
does for one batch of 30 s windows: the student's forward and backward, the
teacher's logits for the KL term, an AdamW step. Settings:

- ``trains``: every student tensor trains; the teacher runs its own encoder.
- ``frozen``: ``model.freeze_encoder``; the teacher still runs its own encoder.
- ``shared``: frozen and equal to the teacher's, so the teacher decodes from the
  student's encoder output (what the trainer does for this case).

Prints the median step time of each and the time saved against ``trains``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import WhisperForConditionalGeneration

from streamtrain.distill.objective import Distillation, same_frozen_encoder
from streamtrain.distill.student import make_student
from streamtrain.train.config import ModelConfig
from streamtrain.train.init_model import init_model
from streamtrain.train.loss import StepFeatures
from streamtrain.train.model import freeze, frozen_to_eval


def step_times(teacher, student_dir: Path, frozen: bool, shared: bool, args) -> list[float]:
    student = WhisperForConditionalGeneration.from_pretrained(student_dir)
    freeze(student, ModelConfig(freeze_encoder=frozen))
    student.train()
    frozen_to_eval(student)
    if shared and not same_frozen_encoder(student, teacher):
        raise RuntimeError("the student's encoder should be the teacher's")
    objective = Distillation(teacher, 1.0, 0.8, 2.0, shared_encoder=shared)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(args.batch, student.config.num_mel_bins, 3000, generator=generator)
    inputs = torch.randint(0, 50000, (args.batch, args.tokens), generator=generator)
    labels = torch.randint(0, 50000, (args.batch, args.tokens), generator=generator)
    times = []
    for _ in range(args.steps + 1):  # the first step warms up
        started = time.perf_counter()
        outputs = student(input_features=features, decoder_input_ids=inputs)
        loss = objective.loss(outputs.logits, labels, StepFeatures(features, features,
                                                                    outputs.encoder_last_hidden_state), inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="whisper-tiny")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        init_model(args.arch, Path(tmp) / "teacher")
        make_student(Path(tmp) / "teacher", 2, Path(tmp) / "student")
        teacher = WhisperForConditionalGeneration.from_pretrained(Path(tmp) / "teacher").requires_grad_(False).eval()
        rows = {name: statistics.median(step_times(teacher, Path(tmp) / "student", frozen, shared, args))
                for name, frozen, shared in (("trains", False, False), ("frozen", True, False),
                                             ("shared", True, True))}
    if args.json:
        print(json.dumps({"arch": args.arch, "batch": args.batch, "step_seconds": rows}))
        return
    print(f"{args.arch} teacher, 2-layer student, batch {args.batch} x 30 s, {args.tokens} tokens, "
          f"{torch.get_num_threads()} threads, median of {args.steps} steps\n")
    print(f"{'encoder':8} {'step s':>8} {'saved':>7}")
    for name, seconds in rows.items():
        print(f"{name:8} {seconds:8.2f} {100 * (1 - seconds / rows['trains']):6.0f}%")


if __name__ == "__main__":
    main()
