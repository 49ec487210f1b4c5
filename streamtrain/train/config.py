"""Recipes: YAML files mapped onto typed dataclasses, with dotted overrides.

The dataclasses are the schema and hold every default. Loading binds the YAML
to them field by field: an unknown key, or a value of the wrong type, is an
error that names its dotted path (``optim.lr``). Nothing in a recipe is ever
executed.

Why a hand-written binder (``bind``, about 60 lines) rather than a library: the
same dataclasses were bound with pydantic 2.12 (``TypeAdapter``, extra keys
forbidden) and OmegaConf 2.4 (``structured`` + ``merge``), with bad recipes:

- a typo, ``optim.warmup_step``: OmegaConf says "Did you mean: 'warmup_steps'?",
  pydantic "Unexpected keyword argument"; here: the unknown key, the closest
  known one, and the section's keys.
- ``train.max_steps: ten``: all three name the key and the value; pydantic adds
  an error code and a documentation URL to every message.
- ``train.mixed_precision: no`` (YAML 1.1 reads it as false): OmegaConf accepts
  it as the string "False"; pydantic says "Input should be a valid string";
  here: quote the word.
- a mixing weight ``lots`` in ``data.train: {url: weight}``: OmegaConf cannot
  express ``str | dict[str, float]`` ("incompatible with type hint"); pydantic
  lists an error for each branch of the union; here: the weight's own key.

The libraries' messages are no clearer for these cases, one misses the YAML
pitfall and cannot hold the schema, and either would be a dependency for this
one use: the binder stays.

Where paths lead: a recipe is a file, or the name of one of the recipes that come
with the package (``BUNDLED``, package data, with the digits tokenizer and the demo
shards they use), so ``streamtrain train tiny`` works from any folder and from an
installed package. A relative input path (``INPUT_PATHS``) written in a recipe file
leads to the file's folder when something is there, and otherwise stays relative
to the working directory (e.g. ``runs/tiny/model``, which an earlier command wrote
there); the defaults of the dataclasses lead into ``BUNDLED``. Overrides given on
the command line, and the output paths (``train.output_dir``, ``data.cache_dir``),
are relative to the working directory (and so are a command's path flags).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from streamtrain.features import build_featurizer
from streamtrain.storage.remote import redacted


#: The recipes that come with the package, and the tokenizer and demo data (shards/) they name.
BUNDLED = Path(__file__).resolve().parent / "recipes"

#: Recipe keys that name something to read: files, folders or URLs (see the module docstring).
INPUT_PATHS = ("data.train", "data.validation", "features.cache", "model.pretrained", "model.tokenizer",
               "distill.labels", "distill.teacher")


class RecipeError(ValueError):
    """A recipe key or value that does not fit the schema."""


@dataclass
class MixtureEntry:
    """One dataset of a mixture, with what its utterances are (a manifest's ``language`` field wins)."""

    weight: float = 1.0  # passes per epoch
    language: str | None = None  # e.g. fr: <|fr|> in the prompt; None: the prompt's
    task: str | None = None  # transcribe | translate; None: the prompt's


@dataclass
class DataConfig:
    #: a dataset folder or URL, or a mapping of them to mixing weights (passes per epoch, e.g.
    #: {s3://a/train: 1.0, s3://b/train: 0.5}) or to entries ({s3://fr/train: {weight: 1.0, language: fr,
    #: task: transcribe}}); by default the demo shards in BUNDLED
    train: str | dict[str, float | MixtureEntry] = "shards/train"
    validation: str | None = "shards/validation"
    batch_size: int | None = None
    #: padded seconds of model input per batch: the trainer's Whisper models pad every utterance to the
    #: featurizer's window (30 s for the published ones), so this counts windows (``train_batch_size``)
    batch_seconds: float | None = 120.0
    #: longer utterances are left out (counted); the featurizer's window bounds it (``train_max_seconds``)
    max_seconds: float | None = None
    #: join consecutive utterances into the featurizer's window (30 s for the published models; see
    #: docs/windows.md): batch_size / batch_seconds then count windows, evaluation stays per utterance
    fill_windows: bool = False
    num_workers: int = 2
    block_shards: int = 4
    on_bad_sample: str = "raise"
    cache_dir: str | None = None
    cache_limit: int | None = None  # bytes
    storage_options: dict | None = None  # fsspec options, e.g. {client_kwargs: {endpoint_url: ...}}
    stall_timeout: float = 60.0  # seconds without a byte before a remote read is abandoned and retried


@dataclass
class FeatureConfig:
    name: str = "whisper_log_mel"
    params: dict = field(default_factory=dict)
    specaugment: dict | None = None  # SpecAugment arguments; None: off
    cache: str | None = None  # a column written by `streamtrain featurize` with this featurizer


@dataclass
class ModelConfig:
    pretrained: str | None = None  # a local Hugging Face model folder; None: build from `whisper`
    whisper: dict = field(default_factory=dict)  # WhisperConfig fields for a model from scratch
    tokenizer: str | None = "tokenizers/digits"  # a Hugging Face tokenizer folder; None: the pretrained model's
    prompt: list[str] = field(default_factory=lambda: ["<|startoftranscript|>"])
    eos_token: str = "<|endoftext|>"
    max_target_tokens: int = 64
    #: the share of training windows whose targets carry Whisper's timestamp tokens (<|0.00|>..<|30.00|>)
    #: at each utterance's start and end (Distil-Whisper's name); the others keep <|notimestamps|>
    timestamp_probability: float = 0.0
    #: weight w of an auxiliary CTC loss on the encoder's output: (1 - w) * objective + w * CTC; 0: none
    #: (``streamtrain.train.ctc``: shortens the plateau of a model trained from scratch)
    ctc_weight: float = 0.0
    gradient_checkpointing: bool = False
    compile: bool = False
    #: Distil-Whisper's freezing options: frozen tensors keep their values (and the frozen encoder runs
    #: without dropout); a frozen encoder equal to the distillation teacher's is run once for both
    freeze_encoder: bool = False
    freeze_decoder: bool = False  # every decoder tensor but the token embeddings (tied to the output layer)
    freeze_embed_positions: bool = False  # the decoder's position embeddings


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 100
    schedule: str = "linear"  # linear | cosine | constant, after warm-up
    grad_clip: float | None = 1.0


@dataclass
class TrainConfig:
    output_dir: str = "runs/tiny"
    seed: int = 0
    max_steps: int = 1000
    grad_accum: int = 1  # loader batches accumulated into each optimizer step
    micro_batches: int = 1  # pieces each batch is split into, for memory (the out-of-memory back-off raises it)
    mixed_precision: str = "no"  # no | bf16 | fp16
    cpu: bool = False
    deterministic: bool = False
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    progress: bool = True
    #: seconds a run folder at a URL stays locked after its trainer's last heartbeat (one every quarter of it):
    #: how long a run killed with SIGKILL keeps others out (train/store_lock.py)
    lock_lease: float = 60.0


@dataclass
class EvalConfig:
    every: int = 200  # steps; 0: only at the end
    batch_size: int = 32
    max_samples: int | None = None
    at_start: bool = True
    #: text normalisation before WER: whisper_english | whisper_basic | plain (train/normalizer.py);
    #: None: whisper_english for English Whisper models, whisper_basic for other languages, plain otherwise
    normalizer: str | None = None


@dataclass
class DistillConfig:
    """Distillation: targets from a pseudo-label column, plus a KL term against the teacher."""

    labels: str | None = None  # a column written by `streamtrain label`; None: ground-truth targets
    teacher: str | None = None  # teacher model folder for the KL term; must be the one that wrote `labels`
    teacher_precision: str = "fp32"  # fp32 | bf16 | int8 (weight-only)
    alpha: float = 1.0  # weight of the cross-entropy on the (pseudo-)labels
    beta: float = 1.0  # weight of KL(teacher || student) * temperature^2
    temperature: float = 2.0
    allow_teacher_mismatch: bool = False  # train against a teacher other than the labeller (logged loudly)
    #: the teacher's logits for the KL term come from the features without SpecAugment (as it labelled them);
    #: true: from the augmented features the student sees
    teacher_sees_augmented: bool = False


@dataclass
class Recipe:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict:
        """The recipe as it may be printed or stored (the run's recipe.yaml, checkpoints, TensorBoard,
        the resume's diff): locations redacted (no credentials, no query), storage_options' secrets hidden.
        A token that changes between sessions is therefore no change of the recipe."""
        data = dataclasses.asdict(self)
        options = data["data"].pop("storage_options")
        return {**redacted(data), "data": {**redacted(data["data"]), "storage_options": redacted(options, True)}}


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key written twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise RecipeError(f"line {key_node.start_mark.line + 1}: key {key!r} is written twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_recipe(path_or_name: str | Path, overrides: list[str] = (), values: dict | None = None) -> Recipe:
    """Load a recipe file (or the name of a bundled one), apply ``key=value`` overrides (values parsed
    as YAML), then ``values`` (dotted key -> value taken as it is, e.g. a command's typed flags).

    Relative input paths are resolved as the module docstring says."""
    path = resolve_recipe_path(path_or_name)
    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader) or {}
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: invalid YAML: {error}") from error
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    for key in INPUT_PATHS:
        section, name = key.split(".")
        if isinstance(data.get(section), dict) and name in data[section]:
            data[section][name] = _resolved(data[section][name], path.resolve().parent)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {override!r} is not of the form key=value")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise RecipeError(f"override {override!r}: invalid value: {error}") from error
        _set_dotted(data, key.strip(), parsed)
    for key, value in (values or {}).items():
        _set_dotted(data, key, value)
    recipe = bind(Recipe, data, "")
    for key in INPUT_PATHS:
        section, name = key.split(".")
        if name not in (data.get(section) or {}):
            config = getattr(recipe, section)
            setattr(config, name, _resolved(getattr(config, name), BUNDLED))
    return recipe


def _resolved(value, folder: Path):
    """``value`` (a path, or a mapping of paths to weights) with each relative path that names something
    in ``folder`` made absolute there; URLs, absolute paths and paths found nowhere in ``folder`` as they are."""
    if isinstance(value, dict):
        return {_resolved(key, folder): weight for key, weight in value.items()}
    if not isinstance(value, str) or "://" in value or Path(value).is_absolute() or not (folder / value).exists():
        return value
    return str(folder / value)


def resolve_recipe_path(path_or_name: str | Path) -> Path:
    path = Path(path_or_name)
    if path.is_file():
        return path
    bundled = BUNDLED / f"{path_or_name}.yaml"
    if bundled.is_file():
        return bundled
    names = ", ".join(sorted(p.stem for p in BUNDLED.glob("*.yaml")))
    raise RecipeError(f"no recipe {str(path_or_name)!r} (not a file, nor a bundled recipe: {names})")


def bind(cls, data, where: str):
    """Build dataclass ``cls`` from ``data``, checking every key and value."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where or 'recipe'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), fields, n=1)
        hint = f"did you mean {_join(where, close[0])!r}? " if close else ""
        raise RecipeError(f"unknown key {_join(where, unknown[0])!r} ({hint}known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    values = {name: _check(hints[name], value, _join(where, name)) for name, value in data.items()}
    return cls(**values)


def _check(hint, value, where: str):
    if dataclasses.is_dataclass(hint):
        return bind(hint, value, where)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _check(option, value, where)
            except RecipeError as error:
                shape = typing.get_origin(option) or option
                errors.append((shape in (list, dict) and isinstance(value, shape), error))
        raise max(errors, key=lambda pair: pair[0])[1]  # the branch of the value's own shape names what is inside
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        if origin is dict:
            key_type, value_type = typing.get_args(hint)
            return {_check(key_type, k, f"{where}.{k}"): _check(value_type, v, f"{where}.{k}")
                    for k, v in value.items()}
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(f"{where}: must be a finite number, got {value!r}")
    if hint is str and isinstance(value, bool):  # YAML 1.1 reads no / yes / off / on as booleans
        raise RecipeError(f"{where}: expected str, got {value!r} (quote the word: {where}='no')")
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise RecipeError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _set_dotted(data: dict, key: str, value) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def validate(recipe: Recipe) -> None:
    """Checks that the types alone do not express: each value's range, then how fields go together."""
    _check_values(recipe)
    _check_combinations(recipe)


def _check_values(recipe: Recipe) -> None:
    choices = {
        "train.mixed_precision": (recipe.train.mixed_precision, ("no", "bf16", "fp16")),
        "optim.schedule": (recipe.optim.schedule, ("linear", "cosine", "constant")),
        "data.on_bad_sample": (recipe.data.on_bad_sample, ("raise", "skip")),
        "distill.teacher_precision": (recipe.distill.teacher_precision, ("fp32", "bf16", "int8")),
    }
    if recipe.eval.normalizer is not None:
        choices["eval.normalizer"] = (recipe.eval.normalizer, ("whisper_english", "whisper_basic", "plain"))
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise RecipeError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
    positive = {
        "data.batch_size": recipe.data.batch_size,
        "data.batch_seconds": recipe.data.batch_seconds,
        "data.max_seconds": recipe.data.max_seconds,
        "data.block_shards": recipe.data.block_shards,
        "data.stall_timeout": recipe.data.stall_timeout,
        "eval.max_samples": recipe.eval.max_samples,
        "model.max_target_tokens": recipe.model.max_target_tokens,
        "train.max_steps": recipe.train.max_steps,
        "train.grad_accum": recipe.train.grad_accum,
        "train.micro_batches": recipe.train.micro_batches,
        "train.checkpoint_every": recipe.train.checkpoint_every,
        "train.keep_checkpoints": recipe.train.keep_checkpoints,
        "train.lock_lease": recipe.train.lock_lease,
        "train.log_every": recipe.train.log_every,
        "eval.batch_size": recipe.eval.batch_size,
        "optim.lr": recipe.optim.lr,
    }
    for key, value in positive.items():
        if value is not None and not value > 0:
            raise RecipeError(f"{key}: must be > 0, got {value!r}")
    not_negative = {
        "data.num_workers": recipe.data.num_workers,
        "data.cache_limit": recipe.data.cache_limit,
        "optim.weight_decay": recipe.optim.weight_decay,
        "optim.warmup_steps": recipe.optim.warmup_steps,
        "distill.alpha": recipe.distill.alpha,
        "distill.beta": recipe.distill.beta,
    }
    for key, value in not_negative.items():
        if value is not None and value < 0:
            raise RecipeError(f"{key}: must be >= 0, got {value!r}")
    if recipe.eval.every < 0:
        raise RecipeError(f"eval.every: must be >= 0, got {recipe.eval.every}")
    if not 0.0 <= recipe.model.ctc_weight < 1.0:
        raise RecipeError(f"model.ctc_weight: must be within 0 .. 1 (1 excluded: the decoder would not train), "
                          f"got {recipe.model.ctc_weight}")
    if not 0.0 <= recipe.model.timestamp_probability <= 1.0:
        raise RecipeError(f"model.timestamp_probability: must be within 0 .. 1, "
                          f"got {recipe.model.timestamp_probability}")
    if recipe.distill.temperature <= 0:
        raise RecipeError(f"distill.temperature: must be > 0, got {recipe.distill.temperature}")
    if len(recipe.optim.betas) != 2:
        raise RecipeError(f"optim.betas: expected two numbers, got {recipe.optim.betas}")


def _check_combinations(recipe: Recipe) -> None:
    for url, entry in (recipe.data.train.items() if isinstance(recipe.data.train, dict) else ()):
        weight = entry.weight if isinstance(entry, MixtureEntry) else entry
        if not weight > 0:
            raise RecipeError(f"data.train.{url}: a mixing weight must be > 0, got {weight!r}")
        if isinstance(entry, MixtureEntry) and entry.task not in (None, "transcribe", "translate"):
            raise RecipeError(f"data.train.{url}.task: {entry.task!r} is not one of transcribe, translate")
    if isinstance(recipe.data.train, dict) and not recipe.data.train:
        raise RecipeError("data.train: an empty mapping (name at least one dataset)")
    if recipe.data.fill_windows:
        window_seconds(recipe.features, needed_by="data.fill_windows")
        if recipe.features.cache:
            raise RecipeError("data.fill_windows: features.cache holds features per utterance, not per window "
                              "(turn one of them off)")
    if recipe.model.timestamp_probability and (len(recipe.model.prompt) < 2
                                               or recipe.model.prompt[-1] != "<|notimestamps|>"):
        raise RecipeError("model.timestamp_probability: model.prompt must end with <|notimestamps|>, after the "
                          "task tokens (it is left out of the windows trained with timestamps)")
    if recipe.features.name != "whisper_log_mel":
        raise RecipeError(
            f"features.name: the trainer's Whisper models take whisper_log_mel features (mels x fixed frames), "
            f"not {recipe.features.name!r}; kaldi_fbank is for `streamtrain featurize` and `stats`"
        )
    if recipe.data.batch_size is None and recipe.data.batch_seconds is None:
        raise RecipeError("data: set batch_size or batch_seconds")
    if recipe.data.batch_seconds is not None and train_batch_size(recipe.data, recipe.features) < 1:
        window = window_seconds(recipe.features)
        raise RecipeError(
            f"data.batch_seconds: {recipe.data.batch_seconds:g} s is less than one {window:g} s window; the model's "
            f"encoder runs every utterance as a full window, so a batch costs count x {window:g} s "
            "(set data.batch_size instead)"
        )
    if recipe.distill.teacher is None and recipe.distill.labels is not None and recipe.distill.beta:
        raise RecipeError("distill.teacher: the KL term (distill.beta > 0) needs the teacher that wrote distill.labels")


def window_seconds(features: FeatureConfig, needed_by: str = "the trainer") -> float:
    """The fixed window every utterance is padded to before the model sees it (Whisper's chunk: 30 s)."""
    try:
        featurizer = build_featurizer(features.name, **features.params)
    except ValueError as error:
        raise RecipeError(f"features.params: {error}") from None
    if getattr(featurizer, "chunk_seconds", None) is None:
        raise RecipeError(f"{needed_by}: features {features.name!r} have no fixed window (only whisper_log_mel's "
                          "chunk_seconds is one)")
    return float(featurizer.chunk_seconds)


def train_max_seconds(data: DataConfig, features: FeatureConfig) -> float:
    """The longest utterance the trainer plans: ``data.max_seconds``, bounded by the featurizer's window.

    The model sees only an utterance's first window; trained against the whole transcript, a longer
    one teaches it to hallucinate what it never heard. So it is left out at planning time and
    counted with the other samples outside the duration limits, whatever ``data.max_seconds`` says.
    """
    window = window_seconds(features)
    return window if data.max_seconds is None else min(data.max_seconds, window)


def train_batch_size(data: DataConfig, features: FeatureConfig) -> int:
    """Samples per training batch, with ``data.batch_seconds`` counted in windows.

    Whisper's encoder runs a full window (30 s for the published models) for a 2 s
    clip as for a 30 s one, so memory and compute follow count x window, not the
    loader's usual "longest x count", which would under-count up to 30x on short
    clips and run out of memory. ``batch_seconds: 120`` with 30 s windows is 4
    utterances a batch; ``batch_size``, when also set, caps it.
    """
    if data.batch_seconds is None:
        return data.batch_size
    windows = int(data.batch_seconds // window_seconds(features))
    return windows if data.batch_size is None else min(windows, data.batch_size)
