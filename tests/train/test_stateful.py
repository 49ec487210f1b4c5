"""Every piece a checkpoint's trainer.json holds is ``Stateful`` with JSON values, and loads back what it saved."""

import json

from streamtrain import Stateful
from streamtrain.train.config import load_recipe
from streamtrain.train.loop import Trainer
from tests.support.runs import digit_dataset, micro_recipe


def test_every_checkpointed_piece_is_stateful_with_json_values_that_load_back(tmp_path):
    data = digit_dataset(tmp_path / "train", 8, seed=4)
    recipe = load_recipe(micro_recipe(tmp_path / "run", data, None, data={"num_workers": 0, "batch_size": 4}))
    trainer = Trainer(recipe)
    batches = iter(trainer.loader)
    trainer.step([next(batches)])  # something to remember: a batch delivered, a step's counters
    trainer.progress.step += 1
    pieces = trainer.checkpointed()
    assert set(pieces) == {"loader", "progress"}
    saved = {}
    for name, piece in pieces.items():
        assert isinstance(piece, Stateful), name
        state = piece.state_dict()
        assert json.loads(json.dumps(state, allow_nan=False)) == state, f"{name}: not plain JSON"
        saved[name] = json.loads(json.dumps(state))

    fresh = Trainer(recipe)
    for name, piece in fresh.checkpointed().items():
        assert piece.state_dict() != saved[name], f"{name}: a fresh one already holds the saved state"
        piece.load_state_dict(saved[name])
        assert piece.state_dict() == saved[name], name
    assert len(fresh.loader) == 1  # of two batches, the one delivered is not planned again
