"""The teacher: loaded frozen, optionally in bf16 or int8, and identified by a fingerprint.

The fingerprint is a sha256 over what decides the teacher's outputs for a
dataset: the model's configuration and every weight as stored (before any cast
or quantization), its tokenizer (every token and id: labels are text and token
ids) and the features it is fed (the featurizer's fingerprint: mel bins, window,
normalisation). The same teacher folder fed the same features always has the
same fingerprint whatever precision it later runs in; a change of a weight, a
token or a feature setting changes it. Pseudo-labels carry it; distillation
checks it.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from streamtrain.features import featurizer_fingerprint
from streamtrain.train.config import ModelConfig
from streamtrain.train.model import inference_config, load_tokenizer, model_folder

PRECISIONS = ("fp32", "bf16", "int8")


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's configuration and weights."""
    digest = hashlib.sha256()
    config = model.config.to_dict()
    for volatile in ("transformers_version", "_name_or_path", "torch_dtype", "dtype"):
        config.pop(volatile, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 over every token and its id (added and special tokens included) and the special-token roles."""
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    payload = {"vocabulary": vocabulary, "special": tokenizer.special_tokens_map}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def teacher_fingerprint(model: nn.Module, tokenizer: PreTrainedTokenizerBase, featurizer: nn.Module) -> str:
    """The teacher's identity: weights and configuration, tokenizer, and the features it is fed."""
    parts = {"model": model_fingerprint(model), "tokenizer": tokenizer_fingerprint(tokenizer),
             "features": featurizer_fingerprint(featurizer)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class Int8Linear(nn.Module):
    """Weight-only int8 linear layer: per-output-channel symmetric scales, bf16/fp32 compute.

    Weights take a quarter of their fp32 memory; activations stay in the input's dtype.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
        self.register_buffer("qweight", torch.round(weight / scale).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.float32))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.qweight.to(x.dtype) * self.scale.to(x.dtype))
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, weight, bias)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear (but the output projection, tied to the embeddings) with Int8Linear."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and name != "proj_out":
                setattr(parent, name, Int8Linear(child))
    return model


def load_teacher(path: str, precision: str = "fp32", device: str | torch.device = "cpu",
                 featurizer: nn.Module | None = None):
    """(frozen teacher in eval mode on ``device``, its fingerprint).

    ``featurizer``: the features the teacher will be fed; None: those its folder was trained with
    (``streamtrain.json``, or Whisper's log-mel for a plain Hugging Face folder), as ``label`` feeds it.
    """
    from transformers import WhisperForConditionalGeneration

    if precision not in PRECISIONS:
        raise ValueError(f"teacher precision must be one of {PRECISIONS}, got {precision!r}")
    model_folder(path)
    try:
        model = WhisperForConditionalGeneration.from_pretrained(path, torch_dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot load the teacher: {error}") from error
    if featurizer is None:
        featurizer, _ = inference_config(path, model.config)
    fingerprint = teacher_fingerprint(model, load_tokenizer(ModelConfig(tokenizer=str(path))), featurizer)
    if precision == "int8":
        quantize_int8(model)
    elif precision == "bf16":
        model = model.to(torch.bfloat16)
    model.requires_grad_(False)
    return model.eval().to(device), fingerprint
