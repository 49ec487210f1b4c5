"""Every recipe in recipes/ loads and validates; overrides and errors name their keys."""

from pathlib import Path

import pytest

from streamtrain.train.config import BUNDLED, RecipeError, load_recipe, train_batch_size, validate

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_validates(path):
    validate(load_recipe(path))


def test_dotted_overrides_are_typed():
    recipe = load_recipe("tiny", ["optim.lr=1e-4", "train.max_steps=7", "data.validation=null"])
    assert recipe.optim.lr == 1e-4 and recipe.train.max_steps == 7 and recipe.data.validation is None


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.whisper_layers=2", "unknown key 'model.whisper_layers'"),
        ("optim.warmup_step=5", "unknown key 'optim.warmup_step' .did you mean 'optim.warmup_steps'"),
        ("data.train={a: 1.0, b: lots}", "data.train.b: expected float, got 'lots'"),
        ("optim.betas=[0.9]", "optim.betas: expected two numbers"),
        ("data.batch_size=eight", "data.batch_size: expected int"),
        ("train.mixed_precision=no", "train.mixed_precision: expected str, got False .quote the word"),
        ("train=3", "train: expected a mapping"),
        ("noequals", "not of the form key=value"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[")):
        validate(load_recipe("tiny", [override]))


def test_unknown_recipe_name():
    with pytest.raises(RecipeError, match="no recipe 'nope'"):
        load_recipe("nope")


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.batch_size=0", "data.batch_size: must be > 0, got 0"),
        ("data.num_workers=-1", "data.num_workers: must be >= 0, got -1"),
        ("optim.lr=inf", "optim.lr: must be a finite number, got inf"),
        ("optim.lr=.nan", "optim.lr: must be a finite number, got nan"),
        ("data.stall_timeout=0", "data.stall_timeout: must be > 0"),
        ("data.train={a: 1.0, b: 0}", "data.train.b: a mixing weight must be > 0"),
    ],
)
def test_values_out_of_range_are_named(override, message):
    with pytest.raises(RecipeError, match=message):
        validate(load_recipe("tiny", [override]))


def test_a_key_written_twice_is_an_error_naming_it_and_its_line(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("data:\n  batch_size: 8\ntrain:\n  max_steps: 3\ndata:\n  batch_size: 16\n")
    with pytest.raises(RecipeError, match=rf"{path}: line 5: key 'data' is written twice"):
        load_recipe(path)


def test_a_mixture_and_storage_options_bind():
    recipe = load_recipe("tiny", ["data.train={shards/train: 1.0, s3://bucket/extra: 0.5}",
                                  "data.storage_options={client_kwargs: {endpoint_url: 'http://127.0.0.1:9000'}}"])
    validate(recipe)
    assert recipe.data.train == {"shards/train": 1.0, "s3://bucket/extra": 0.5}
    assert recipe.data.storage_options["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    "overrides,batch_size",
    [
        (["data.batch_seconds=120", "data.batch_size=null"], 4),  # 30 s windows: count x 30 s
        (["data.batch_seconds=119", "data.batch_size=null"], 3),
        (["data.batch_seconds=600", "data.batch_size=8"], 8),  # batch_size caps it
        (["data.batch_seconds=null", "data.batch_size=5"], 5),
        (["data.batch_seconds=120", "data.batch_size=null", "features.params={n_mels: 80, chunk_seconds: 4}"], 30),
    ],
)
def test_batch_seconds_count_whole_windows_for_whisper(overrides, batch_size):
    """Whisper's encoder runs every clip as a full window, so a batch of 2 s clips costs as much as one of
    30 s clips: batch_seconds is count x window, never the loader's "longest x count"."""
    recipe = load_recipe("whisper-finetune", overrides)
    validate(recipe)
    assert train_batch_size(recipe.data, recipe.features) == batch_size


def test_batch_seconds_below_one_window_is_refused():
    with pytest.raises(RecipeError, match=r"data.batch_seconds: 20 s is less than one 30 s window.*set data.batch_size"):
        validate(load_recipe("whisper-finetune", ["data.batch_seconds=20"]))


def test_a_bundled_recipe_finds_its_tokenizer_and_data_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("tiny")
    for path in (recipe.data.train, recipe.data.validation, recipe.model.tokenizer):
        assert Path(path).is_absolute() and Path(path).is_relative_to(BUNDLED) and Path(path).exists(), path
    assert recipe.train.output_dir == "runs/tiny"  # outputs: in the working directory


def test_relative_paths_lead_to_the_recipe_folder_where_they_exist_there_and_defaults_into_the_package(tmp_path):
    (tmp_path / "corpus" / "train").mkdir(parents=True)
    path = tmp_path / "recipe.yaml"
    path.write_text("data:\n  train: {corpus/train: 1.0, s3://bucket/extra: 0.5}\n  validation: corpus/validation\n"
                    "model:\n  pretrained: runs/student\n")
    recipe = load_recipe(path, ["distill.labels=corpus/train"])
    assert recipe.data.train == {str(tmp_path / "corpus" / "train"): 1.0, "s3://bucket/extra": 0.5}
    assert recipe.data.validation == "corpus/validation"  # not there: the working directory's
    assert recipe.model.pretrained == "runs/student"  # e.g. written by an earlier command
    assert recipe.distill.labels == "corpus/train"  # overrides: the working directory's
    assert recipe.model.tokenizer == str(BUNDLED / "tokenizers" / "digits")  # a default


@pytest.mark.slow
def test_train_tiny_runs_from_an_empty_folder(tmp_path, monkeypatch):
    from tests.support.cli import run_cli

    monkeypatch.chdir(tmp_path)
    run = run_cli("train", "tiny", "--max-steps", "2", "eval.at_start=false", "eval.batch_size=8",
                  "eval.max_samples=8")
    assert (tmp_path / "runs" / "tiny" / "model").is_dir() and "validation WER" in run.out


@pytest.mark.parametrize("folder", ["run #1", "2024", "yes", "a: b"])
def test_a_path_flag_is_a_string_never_yaml(folder):
    from streamtrain.cli import build_parser, train as train_command

    parser, _ = build_parser("train", train_command)
    args = parser.parse_args(["train", "tiny", "--output-dir", folder])
    assert train_command.recipe_of(args).train.output_dir == folder


def test_the_stored_recipe_holds_no_secret():
    """What a run writes and prints of its recipe: URLs without credentials or query, storage_options'
    secrets hidden (what a backend needs that is not secret, like an endpoint, is kept)."""
    recipe = load_recipe("tiny", ["data.train=s3://bucket/ds?token=TOKEN", "data.validation=https://u:PW@host/v",
                                  "data.storage_options={key: AKIA, secret: PW, client_kwargs: {endpoint_url: "
                                  "'http://127.0.0.1:9000'}}"])
    stored = recipe.to_dict()
    assert stored["data"]["train"] == "s3://bucket/ds" and stored["data"]["validation"] == "https://host/v"
    assert stored["data"]["storage_options"] == {"key": "<redacted>", "secret": "<redacted>",
                                                 "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    assert recipe.data.train == "s3://bucket/ds?token=TOKEN"  # the recipe itself keeps what reading needs
    mixture = load_recipe("tiny", ["data.train={'s3://b/a?token=TOKEN': 1, 'https://u:PW@h/b': 2}"]).to_dict()
    assert mixture["data"]["train"] == {"s3://b/a": 1, "https://h/b": 2}
