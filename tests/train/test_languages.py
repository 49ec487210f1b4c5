"""Languages and tasks: per dataset of a mixture and per utterance (a manifest's ``language`` field), they choose
the prompt's tokens in training and evaluation, and evaluation reports WER per language."""

import json

import pytest
from transformers import AutoTokenizer

from streamtrain.pack.packer import pack
from streamtrain.train.config import RecipeError, load_recipe
from streamtrain.train.loop import Trainer
from streamtrain.train.model import IGNORE_INDEX, TextCodec
from tests.support.corpus import utterances, write_corpus
from tests.support.runs import DIGITS_TOKENIZER, digit_dataset, micro_recipe

TOKENS = ["<|en|>", "<|fr|>", "<|de|>", "<|transcribe|>", "<|translate|>"]
PROMPT = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """The digits vocabulary with Whisper's language and task tokens after it (ids 13-17)."""
    out = tmp_path_factory.mktemp("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(DIGITS_TOKENIZER)
    tokenizer.add_special_tokens({"additional_special_tokens": TOKENS})
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def codec(tokenizer_dir):
    return TextCodec(AutoTokenizer.from_pretrained(tokenizer_dir), PROMPT, "<|endoftext|>", 12)


def test_a_language_and_a_task_replace_the_prompts_own(codec):
    ids = dict(zip(TOKENS, codec.tokenizer.convert_tokens_to_ids(TOKENS)))
    assert codec.prompt_for() == codec.prompt_ids == [1, ids["<|en|>"], ids["<|transcribe|>"]]
    assert codec.prompt_for("fr") == [1, ids["<|fr|>"], ids["<|transcribe|>"]]
    assert codec.prompt_for("de", "translate") == [1, ids["<|de|>"], ids["<|translate|>"]]
    with pytest.raises(RecipeError, match="language 'ja'.*<\\|ja\\|>.* is not in the tokenizer"):
        codec.prompt_for("ja")
    english_only = TextCodec(codec.tokenizer, ["<|startoftranscript|>"], "<|endoftext|>", 12)
    assert english_only.prompt_for("fr") == [1]  # no language in its prompt: nothing to choose


def test_targets_follow_each_rows_prompt(codec):
    short = TextCodec(codec.tokenizer, ["<|startoftranscript|>"], "<|endoftext|>", 12)
    targets = codec.targets(["one two", "three"], [codec.prompt_for("fr"), short.prompt_ids])
    fr = codec.prompt_for("fr")
    assert targets.decoder_input_ids[0, :3].tolist() == fr
    assert targets.labels[0].tolist()[:5] == [IGNORE_INDEX, IGNORE_INDEX, 4, 5, 0]  # predicted after the prompt
    assert targets.labels[1].tolist()[:2] == [6, 0] and targets.decoder_input_ids[1, 0] == 1


def _with_languages(root, count, seed, languages):
    corpus = write_corpus("jsonl", root / "src", utterances(count, seed=seed, prefix=f"l{seed}-"))
    lines = [json.loads(line) for line in corpus.source.read_text().splitlines()]
    corpus.source.write_text("".join(json.dumps({**line, "language": languages[i % len(languages)]}) + "\n"
                                     for i, line in enumerate(lines)))
    pack(corpus.source, root / "data", progress=False)
    return root / "data"


@pytest.mark.slow
def test_datasets_and_utterances_choose_the_prompt_and_wer_is_per_language(tokenizer_dir, codec, tmp_path):
    french = digit_dataset(tmp_path / "fr", 8, seed=7)  # no language field: the dataset's
    mixed = _with_languages(tmp_path / "mixed", 8, 8, ["de", "en"])  # each utterance its own
    validation = _with_languages(tmp_path / "validation", 6, 9, ["de", "en", "fr"])
    path = micro_recipe(tmp_path / "run", {str(french): 1.0, str(mixed): 1.0}, validation,
                        model={"tokenizer": str(tokenizer_dir), "prompt": PROMPT})
    recipe = load_recipe(path, [f"data.train={{{french}: {{weight: 1.0, language: fr, task: translate}}, "
                                f"{mixed}: 1.0}}"])
    trainer = Trainer(recipe)
    seen = {}
    for batch in trainer.loader:
        for key, prompt in zip(batch.keys, trainer._prompts(batch)):
            seen[key] = codec.tokenizer.convert_ids_to_tokens(prompt)
        if len(seen) == 16:
            break
    assert {k: v for k, v in seen.items() if k.startswith("s7-")} == \
        {f"s7-{i:05d}": ["<|startoftranscript|>", "<|fr|>", "<|translate|>"] for i in range(8)}
    assert {tuple(v) for k, v in seen.items() if k.startswith("l8-")} == \
        {("<|startoftranscript|>", "<|de|>", "<|transcribe|>"), ("<|startoftranscript|>", "<|en|>", "<|transcribe|>")}
    (tmp_path / "run").mkdir()
    record = trainer.evaluate()
    assert set(record["wer_by_language"]) == {"de", "en", "fr"} and record["utterances"] == 6


def test_a_dataset_language_the_prompt_cannot_take_is_named(tokenizer_dir, tmp_path):
    data = digit_dataset(tmp_path / "d", 2, seed=1)
    path = micro_recipe(tmp_path / "run", data, None, model={"tokenizer": str(tokenizer_dir)})
    recipe = load_recipe(path, [f"data.train={{{data}: {{language: fr}}}}"])
    with pytest.raises(RecipeError, match=rf"data.train.{data}.language: model.prompt .* names no language"):
        Trainer(recipe)
