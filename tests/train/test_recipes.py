"""Every recipe in recipes/ loads and validates; overrides and errors name their keys."""

from pathlib import Path

import pytest

from streamtrain.train.config import RecipeError, load_recipe, validate

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
        ("optim.betas=[0.9]", "optim.betas: expected two numbers"),
        ("data.batch_size=eight", "data.batch_size: expected int"),
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
