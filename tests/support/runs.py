"""Tiny training runs for tests and benchmarks: spoken-digit datasets, a micro recipe, multi-process launches.

A run of the micro recipe takes seconds on a CPU, uses every part of the real
trainer (loader workers, featurizer, SpecAugment, dropout, checkpoints) and is
deterministic, so tests can compare parameters bit for bit.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml

from streamtrain.pack.packer import pack
from tests.support.corpus import utterances, write_corpus
from tests.support.servers import free_port

DIGITS_TOKENIZER = Path(__file__).resolve().parents[2] / "recipes" / "tokenizers" / "digits"
#: the digits tokenizer with <|notimestamps|> (id 13) and Whisper's timestamps <|0.00|>..<|8.00|> (ids 14..414)
DIGITS_TIMESTAMPS_TOKENIZER = DIGITS_TOKENIZER.with_name("digits-timestamps")


def digit_dataset(root: str | Path, count: int, seed: int, shard_size: int = 150_000) -> Path:
    """Pack ``count`` espeak-ng spoken-digit utterances into ``root`` (several small shards)."""
    root = Path(root)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus("jsonl", Path(tmp) / "src", utterances(count, seed=seed, prefix=f"s{seed}-"))
        pack(corpus.source, root, shard_size=shard_size, progress=False)
    return root


def micro_recipe(run_dir: str | Path, train_data: str | Path | dict, validation_data: str | Path | None,
                 **sections) -> Path:
    """Write a recipe for a very small model; ``train_data`` is a dataset or a mapping of datasets to
    mixing weights; ``sections`` update the recipe's sections (e.g. train={...})."""
    train = {str(url): weight for url, weight in train_data.items()} if isinstance(train_data, dict) else str(train_data)
    recipe = {
        "data": {"train": train, "validation": None if validation_data is None else str(validation_data),
                 "batch_size": 8, "batch_seconds": None, "max_seconds": 4.0, "num_workers": 1, "block_shards": 2},
        "features": {"name": "whisper_log_mel", "params": {"n_mels": 40, "chunk_seconds": 4},
                     "specaugment": {"freq_masks": 1, "freq_width": 5, "time_masks": 1, "time_width": 10}},
        "model": {"tokenizer": str(DIGITS_TOKENIZER), "max_target_tokens": 12,
                  "whisper": {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
                              "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
                              "dropout": 0.1}},
        "optim": {"lr": 3e-3, "warmup_steps": 3},
        "train": {"output_dir": str(run_dir), "max_steps": 12, "checkpoint_every": 4, "keep_checkpoints": 10,
                  "log_every": 2, "cpu": True, "progress": False},
        "eval": {"every": 0, "at_start": False, "batch_size": 16},
        "distill": {},
    }
    for section, values in sections.items():
        recipe[section].update(values)
    path = Path(run_dir).with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


def random_whisper(out_dir: str | Path, decoder_layers: int = 4, seed: int = 0, d_model: int = 32,
                   timestamps: bool = False) -> Path:
    """A randomly initialised small Whisper model folder (model, digits tokenizer, streamtrain.json),
    shaped like the micro recipe's model: a stand-in teacher for tests. ``timestamps``: with the
    digits-timestamps tokenizer and the prompt ``<|startoftranscript|> <|notimestamps|>``."""
    import json
    import shutil

    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = DIGITS_TIMESTAMPS_TOKENIZER if timestamps else DIGITS_TOKENIZER
    max_tokens = 24 if timestamps else 12
    config = WhisperConfig(vocab_size=415 if timestamps else 13, num_mel_bins=40, max_source_positions=200,
                           max_target_positions=max_tokens,
                           d_model=d_model, encoder_layers=2, decoder_layers=decoder_layers, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                           decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=0)
    out = Path(out_dir)
    WhisperForConditionalGeneration(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / name, out / name)
    prompt = ["<|startoftranscript|>", "<|notimestamps|>"] if timestamps else ["<|startoftranscript|>"]
    (out / "streamtrain.json").write_text(json.dumps({
        "features": {"name": "whisper_log_mel", "params": {"n_mels": 40, "chunk_seconds": 4}},
        "prompt": prompt, "eos_token": "<|endoftext|>", "max_target_tokens": max_tokens}))
    return out


def accelerate_launch(processes: int, *command: str) -> list[str]:
    """The command line that runs ``python COMMAND...`` in ``processes`` CPU processes (gloo).

    ``--multi_gpu``, not ``--cpu``: with ``--cpu`` accelerate starts a single process.
    A free port per launch keeps concurrent or back-to-back launches apart.
    """
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), *command]
