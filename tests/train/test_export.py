"""A trained model's folder: transformers' ASR pipeline, given nothing but the folder, transcribes what
``streamtrain eval`` writes; the word-level tokenizer becomes a WhisperTokenizer with the same ids and texts."""

import json

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordPiece
from transformers import AutoTokenizer, PreTrainedTokenizerFast, WhisperTokenizer

from tests.support.cli import run_cli
from tests.support.pipeline import eval_and_pipeline
from tests.support.runs import DIGITS_TOKENIZER, micro_recipe
from tests.support.speech import DIGIT_WORDS
from streamtrain.train.whisper_tokenizer import WhisperTokenizerError, as_whisper_tokenizer


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """The micro recipe trained long enough to say different things about different utterances."""
    train, test = digits
    run = tmp_path_factory.mktemp("export") / "run"
    run_cli("train", str(micro_recipe(run, train, None, train={"max_steps": 100, "checkpoint_every": 100},
                                      features={"specaugment": None})))
    return run / "model", test


@pytest.mark.slow
def test_the_pipeline_transcribes_every_utterance_as_streamtrain_eval(trained, tmp_path):
    model_dir, test = trained
    transcripts = eval_and_pipeline(model_dir, test, tmp_path / "eval.jsonl")
    assert len(transcripts) == 12 and all(t.seconds <= 4.0 for t in transcripts)  # within the model's window
    assert len({t.streamtrain for t in transcripts}) >= 3, "the model should say different things"
    differing = [t for t in transcripts if t.pipeline.strip() != t.streamtrain]
    assert not differing


@pytest.mark.slow
def test_the_folder_names_what_the_pipeline_needs(trained):
    model_dir, _ = trained
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["decoder_start_token_id"] == 1 and generation["eos_token_id"] == 0
    assert generation["max_length"] == 11  # 12 target positions, one of them the prompt
    assert generation["num_beams"] == 1 and not generation["do_sample"]
    assert "forced_decoder_ids" not in generation  # deprecated in transformers
    # from scratch, complete for the vocabulary: the start token is a control token, an empty transcript is
    # not a first choice, and a digits vocabulary has no language, task or timestamp tokens
    assert generation["suppress_tokens"] == [1] and generation["begin_suppress_tokens"] == [0]
    assert not generation["is_multilingual"] and "no_timestamps_token_id" not in generation
    assert generation["alignment_heads"] == [[0, 0], [0, 1]]
    extractor = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert (extractor["chunk_length"], extractor["n_samples"], extractor["nb_max_frames"]) == (4, 64000, 400)
    assert json.loads((model_dir / "tokenizer_config.json").read_text())["tokenizer_class"] == "WhisperTokenizer"


def test_the_word_level_tokenizer_keeps_its_ids_and_texts_as_whisper_tokenizer(tmp_path):
    digits = AutoTokenizer.from_pretrained(DIGITS_TOKENIZER)
    as_whisper_tokenizer(digits).save_pretrained(tmp_path)
    converted = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(converted, WhisperTokenizer)
    for text in ["one two three", "nine", *(" ".join(DIGIT_WORDS[i:] + DIGIT_WORDS[:i]) for i in range(10))]:
        ids = digits(text, add_special_tokens=False)["input_ids"]
        assert converted(text, add_special_tokens=False)["input_ids"] == ids
        assert converted.decode(ids + [0], skip_special_tokens=True).strip() == text
    for token_id in range(len(digits)):
        expected = digits.decode([token_id], skip_special_tokens=True)
        assert converted.decode([token_id], skip_special_tokens=True).strip() == expected
    # what the pipeline looks up lies after every id the 13-token model can emit
    assert min(converted.convert_tokens_to_ids(["<|notimestamps|>", "<|startofprev|>"])) >= len(digits)
    assert digits.all_special_ids == converted.all_special_ids[: len(digits.all_special_ids)]


def test_a_tokenizer_with_no_whisper_equivalent_is_named():
    backend = Tokenizer(WordPiece({"[UNK]": 0, "one": 1, "##s": 2}, unk_token="[UNK]"))
    with pytest.raises(WhisperTokenizerError, match="WordPiece"):
        as_whisper_tokenizer(PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]"))
