"""The model, its tokenizer, target encoding and greedy decoding.

Any Whisper-architecture model (``WhisperForConditionalGeneration``): built
from a ``WhisperConfig`` for training from scratch, or loaded from a local
Hugging Face folder. Decoding is a plain greedy loop with the KV cache, so it
works with any tokenizer and prompt (Whisper's ``generate`` assumes Whisper's
own vocabulary and task tokens).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, WhisperConfig, WhisperForConditionalGeneration
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from streamtrain.train.config import ModelConfig, RecipeError
from streamtrain.train.generation import whisper_generation_config

IGNORE_INDEX = -100
LANGUAGE_CODES = frozenset(LANGUAGES)
TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class Targets:
    decoder_input_ids: torch.Tensor  # B x L, padded with eos
    labels: torch.Tensor  # B x L, IGNORE_INDEX where there is nothing to predict


class TextCodec:
    """Turns transcripts into decoder inputs and labels, and token ids back into text."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt: list[str], eos_token: str, max_tokens: int):
        self.tokenizer = tokenizer
        self.prompt, self.eos_token = list(prompt), eos_token
        self.prompt_ids = [self._token_id(t) for t in prompt]
        self.eos_id = self._token_id(eos_token)
        self.max_tokens = max_tokens

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        # Whisper's unknown token is <|endoftext|>, its end token: a real token, not a miss
        if token_id is None or (token_id == self.tokenizer.unk_token_id and token != self.tokenizer.unk_token):
            raise RecipeError(f"model: token {token!r} is not in the tokenizer's vocabulary")
        return token_id

    def slots(self) -> tuple[bool, bool]:
        """Whether the prompt names a language, and a task: only those can be chosen per utterance."""
        return tuple(any(t.strip("<|>") in kind for t in self.prompt) for kind in (LANGUAGE_CODES, TASKS))

    def prompt_for(self, language: str | None = None, task: str | None = None) -> list[int]:
        """The prompt's ids with ``language`` (a code: ``fr``) and ``task`` (transcribe | translate) in place of
        its own language and task tokens; None, or a prompt without such a token, keeps the prompt's (an
        English-only model's prompt names no language: its utterances' ``language`` fields change nothing)."""
        tokens = [f"<|{language}|>" if language and t.strip("<|>") in LANGUAGE_CODES else
                  f"<|{task}|>" if task and t.strip("<|>") in TASKS else t for t in self.prompt]
        if tokens == self.prompt:
            return self.prompt_ids
        try:
            return [self._token_id(token) for token in tokens]
        except RecipeError as error:
            raise RecipeError(f"language {language!r}, task {task!r}: {error}") from None

    def targets(self, texts: list[str], prompts: list[list[int]] | None = None,
                timestamps: Sequence[bool] = ()) -> Targets:
        """prompt + text + eos, cut to max_tokens; only text and eos are predicted. ``prompts``: each
        text's prompt ids (``prompt_for``); None: the codec's prompt for all. Rows marked in
        ``timestamps`` hold Whisper's time tokens in their text and leave the prompt's last token
        (<|notimestamps|>, checked by the recipe) out."""
        prompts = prompts or [self.prompt_ids] * len(texts)
        sequences = []
        for row, (text, prompt) in enumerate(zip(texts, prompts)):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if row < len(timestamps) and timestamps[row]:
                prompt = prompt[:-1]
            sequences.append(((prompt + ids)[: self.max_tokens - 1] + [self.eos_id], len(prompt)))
        width = max(len(s) for s, _ in sequences) - 1
        inputs = torch.full((len(texts), width), self.eos_id, dtype=torch.long)
        labels = torch.full((len(texts), width), IGNORE_INDEX, dtype=torch.long)
        for row, (seq, prompt_length) in enumerate(sequences):
            first_predicted = prompt_length - 1
            inputs[row, : len(seq) - 1] = torch.tensor(seq[:-1])
            labels[row, first_predicted : len(seq) - 1] = torch.tensor(seq[first_predicted + 1 :])
        return Targets(inputs, labels)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    source = config.tokenizer or config.pretrained
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise RecipeError(f"model.tokenizer: cannot load a tokenizer from {source!r}: {error}") from error
    if len(tokenizer) < 3:  # offline hubs hand back a stub tokenizer instead of failing
        raise RecipeError(f"model.tokenizer: {source!r} gave a tokenizer of {len(tokenizer)} tokens")
    return tokenizer


def build_model(config: ModelConfig, codec: TextCodec, n_mels: int, n_frames: int) -> WhisperForConditionalGeneration:
    """A model whose input is ``n_mels`` x ``n_frames`` features."""
    if config.pretrained:
        try:
            model = WhisperForConditionalGeneration.from_pretrained(config.pretrained)
        except (OSError, ValueError) as error:
            raise RecipeError(f"model.pretrained: cannot load {config.pretrained!r}: {error}") from error
    else:
        try:
            whisper = WhisperConfig(
                vocab_size=len(codec.tokenizer),
                num_mel_bins=n_mels,
                max_source_positions=n_frames // 2,
                max_target_positions=config.max_target_tokens,
                decoder_start_token_id=codec.prompt_ids[0],
                pad_token_id=codec.eos_id,
                bos_token_id=codec.prompt_ids[0],
                eos_token_id=codec.eos_id,
                **config.whisper,
            )
        except TypeError as error:
            raise RecipeError(f"model.whisper: {error}") from error
        model = WhisperForConditionalGeneration(whisper)
    expected = (model.config.num_mel_bins, model.config.max_source_positions * 2)
    if expected != (n_mels, n_frames):
        raise RecipeError(
            f"features give {n_mels} x {n_frames} inputs, the model expects {expected[0]} x {expected[1]}"
        )
    model.generation_config = whisper_generation_config(model, codec.tokenizer, codec.prompt, codec.max_tokens,
                                                        pretrained=config.pretrained is not None)
    # the model config's defaults (openai-whisper's ids) are no ids of another vocabulary
    model.config.suppress_tokens = model.generation_config.suppress_tokens
    model.config.begin_suppress_tokens = model.generation_config.begin_suppress_tokens
    freeze(model, config)
    if config.gradient_checkpointing:
        # transformers 5.2x renamed it (the old name warns of its removal)
        enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
        enable()
    return model


def freeze(model: WhisperForConditionalGeneration, config: ModelConfig) -> None:
    """Stop training what ``model.freeze_*`` names (Distil-Whisper's ``--freeze_encoder`` and kin)."""
    decoder = model.get_decoder()
    if config.freeze_encoder:
        model.get_encoder().requires_grad_(False)
    if config.freeze_decoder:
        decoder.requires_grad_(False)
        decoder.embed_tokens.requires_grad_(True)  # tied to the output projection, which trains
    if config.freeze_embed_positions:
        decoder.embed_positions.requires_grad_(False)


def frozen_to_eval(model: WhisperForConditionalGeneration) -> None:
    """Put a frozen encoder in eval mode (after ``train()``): no dropout, so its output is what a teacher
    with the same weights computes, and its values never change."""
    encoder = model.get_encoder()
    if not any(parameter.requires_grad for parameter in encoder.parameters()):
        encoder.eval()


#: ``rules(logits, generated)``: masks one decoding step's logits (B x V, in place), given the tokens chosen so far.
StepRules = Callable[[torch.Tensor, list[torch.Tensor]], None]


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]  # without the prompt and the end token
    avg_logprob: float  # mean log-probability of the generated tokens, the end token included
    token_logprobs: list[float]  # the log-probability of each of ``token_ids``


@torch.no_grad()
def greedy_generate(model, features: torch.Tensor, codec: TextCodec, suppressed: Sequence[int] = (),
                    prompt: list[int] | None = None, rules: StepRules | None = None) -> list[Generation]:
    """Greedy transcripts of a batch of features (B x M x F) after ``prompt`` (ids; None: the codec's),
    with the KV cache.

    ``suppressed`` token ids, and those the model's generation config suppresses, are never chosen (their
    probability is moved to the others, as Whisper's decoding suppresses); its ``begin_suppress_tokens``
    are never chosen first. transformers' Whisper ``generate`` does the same with that config.
    ``rules(logits, generated)``, when given, masks each step's logits (B x V, in place) after the
    suppression, from the tokens chosen so far (one B tensor a step), e.g. Whisper's timestamp rules.
    """
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    settings, vocabulary = model.generation_config, model.config.vocab_size
    # ids past the vocabulary (WhisperConfig's defaults in a folder of another vocabulary) are no tokens to
    # suppress, as transformers' logits processors ignore them
    suppressed = sorted(i for i in {*suppressed, *(settings.suppress_tokens or ())} if i < vocabulary)
    begin_suppressed = [i for i in settings.begin_suppress_tokens or () if i < vocabulary]

    encoder = model.get_encoder()(features.to(model.dtype)).last_hidden_state
    batch = features.shape[0]
    prompt = codec.prompt_ids if prompt is None else prompt
    step_input = torch.tensor([prompt] * batch, device=features.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=features.device)
    logprob_sum = torch.zeros(batch, dtype=torch.float64, device=features.device)
    counts = torch.zeros(batch, dtype=torch.long, device=features.device)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    # transformers 5.2x renamed past_key_values (deprecated since) to cache
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    generated: list[torch.Tensor] = []
    chosen: list[torch.Tensor] = []  # the log-probability of each step's token
    for _ in range(codec.max_tokens - len(prompt)):
        out = model(encoder_outputs=(encoder,), decoder_input_ids=step_input, use_cache=True, **{cache_name: cache})
        cache = getattr(out, cache_name)
        logits = out.logits[:, -1].float()
        logits[:, suppressed] = -torch.inf
        if not generated:
            logits[:, begin_suppressed] = -torch.inf
        if rules is not None:
            rules(logits, generated)
        logprobs = logits.log_softmax(-1)
        next_ids = logprobs.argmax(-1)
        next_ids = torch.where(finished, torch.full_like(next_ids, codec.eos_id), next_ids)
        chosen.append(logprobs.gather(1, next_ids[:, None])[:, 0])
        logprob_sum += torch.where(finished, 0.0, chosen[-1].double())
        counts += (~finished).long()
        generated.append(next_ids)
        finished |= next_ids == codec.eos_id
        if finished.all():
            break
        step_input = next_ids[:, None]
    ids = torch.stack(generated, dim=1).tolist() if generated else [[] for _ in range(batch)]
    token_logprobs = torch.stack(chosen, dim=1).tolist() if chosen else [[] for _ in range(batch)]
    results = []
    for row, tokens in enumerate(ids):
        tokens = tokens[: tokens.index(codec.eos_id)] if codec.eos_id in tokens else tokens
        average = float(logprob_sum[row] / max(int(counts[row]), 1))
        results.append(Generation(codec.decode(tokens), tokens, average, token_logprobs[row][: len(tokens)]))
    return results


def model_folder(path: str | Path) -> Path:
    """``path`` if it is a local folder. Checked before loading: given a path that does not exist,
    Hugging Face takes it for a hub id and spends half a minute on retries before failing."""
    folder = Path(path)
    if not folder.is_dir():
        raise RecipeError(f"{path}: no such folder" if not folder.exists() else f"{path}: not a folder")
    return folder


def load_trained(path):
    """(model, featurizer, codec) from a model folder written by ``streamtrain train``."""
    model_folder(path)
    try:
        model = WhisperForConditionalGeneration.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise RecipeError(f"{path}: not a Hugging Face Whisper model folder: {error}") from error
    return (model, *inference_config(path, model.config))


def inference_config(path, model_config):
    """(featurizer, codec) that a model folder was trained with.

    A plain Hugging Face Whisper folder works too: its features default to
    Whisper's log-mel with the model's mel count, its prompt to Whisper's
    English transcription prompt.
    """
    import json
    from pathlib import Path

    from streamtrain.features import build_featurizer

    saved = Path(path) / "streamtrain.json"
    if saved.is_file():
        config = json.loads(saved.read_text())
    else:
        config = {
            "features": {"name": "whisper_log_mel", "params": {"n_mels": model_config.num_mel_bins}},
            "prompt": ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"],
            "eos_token": "<|endoftext|>",
            "max_target_tokens": model_config.max_target_positions,
        }
    tokenizer = load_tokenizer(ModelConfig(tokenizer=str(path)))
    featurizer = build_featurizer(config["features"]["name"], **config["features"]["params"])
    codec = TextCodec(tokenizer, config["prompt"], config["eos_token"], config["max_target_tokens"])
    return featurizer, codec
