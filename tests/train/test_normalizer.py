"""WER's text normalisation: Whisper's English and basic normalisers as transformers' own tokenizer applies them
(with the spelling map a published folder holds), the plain one as before, and which one a model gets."""

import pytest
from transformers import AutoTokenizer, WhisperTokenizer

from streamtrain.train.config import RecipeError
from streamtrain.train.evaluate import ErrorCounts
from streamtrain.train.normalizer import build_normalizer, default_normalizer, plain
from tests.support.runs import DIGITS_TOKENIZER

AWKWARD = [
    "Mr. Smith's colour is grey; it's £1,500.50!",
    "I'm gonna win 2nd place in the twenty-first century.",
    "Uh, hmm, the theatre's programme: [MUSIC] (laughs) ninety nine point five percent",
    "She said \"don't\" -- and he'd've gone at 3:45 p.m. on the 1st of May, 1999",
    "The organisation's analysers can't recognise 'em; O'Neil won't.",
    "twenty one hundred and five dollars, $3.50, 10%",
    "  Ça  va? Naïve café — déjà vu…  ",
]


@pytest.mark.whisper
@pytest.mark.parametrize("text", AWKWARD)
def test_whisper_normalisers_are_transformers_own(whisper_tiny, text):
    reference = WhisperTokenizer.from_pretrained(whisper_tiny)  # its normalizer.json, as published
    assert reference.english_spelling_normalizer, "init-model writes the spelling map as the published folders do"
    english = reference.normalize(text)
    assert build_normalizer("whisper_english", whisper_tiny)(text) == " ".join(english.split())
    assert build_normalizer("whisper_english")(text) == " ".join(english.split())  # openai-whisper's map
    assert build_normalizer("whisper_basic")(text) == " ".join(reference.basic_normalize(text).split())


def test_the_english_normaliser_spells_numbers_contractions_and_british_words_as_whisper():
    english = build_normalizer("whisper_english")
    assert english("Mr. Smith's colour is grey; it's £1,500.50!") == "mister smith is color is gray it is £1500.50"
    assert english("I'm gonna win, in the twenty-first century.") == "i am going to win in the 21st century"
    assert plain("Mr. Smith's colour is grey") == "mr smith's colour is grey"  # as before


def test_wer_depends_on_the_normaliser():
    reference, hypothesis = "The colour is twenty-one.", "the color is 21"
    english, basic = ErrorCounts(), ErrorCounts()
    english.add(reference, hypothesis, build_normalizer("whisper_english"))
    basic.add(reference, hypothesis, build_normalizer("whisper_basic"))
    assert (english.word_errors, english.words) == (0, 4)  # "the color is 21"
    assert (basic.word_errors, basic.words) == (3, 5)  # "the colour is twenty one"


def test_each_model_gets_its_default():
    digits = AutoTokenizer.from_pretrained(DIGITS_TOKENIZER)
    assert default_normalizer(["<|startoftranscript|>"], digits) == "plain"  # "one two" would become "12"
    whisper = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    assert default_normalizer(whisper, digits) == "whisper_english"
    assert default_normalizer(["<|startoftranscript|>", "<|fr|>", "<|transcribe|>"], digits) == "whisper_basic"


def test_an_unknown_normaliser_is_named():
    with pytest.raises(RecipeError, match="eval.normalizer: 'english' is not one of"):
        build_normalizer("english")
