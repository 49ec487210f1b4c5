"""What the training step hands its objective: the features as made and as the model saw them."""

import torch

from streamtrain.features import generator_for_step
from tests.support.runs import micro_recipe
from streamtrain.train.config import load_recipe
from streamtrain.train.loop import Trainer
from streamtrain.train.loss import CrossEntropy


class RecordingObjective(CrossEntropy):
    def __init__(self):
        self.features = []

    def loss(self, logits, labels, features, decoder_inputs):
        self.features.append(features)
        return super().loss(logits, labels, features, decoder_inputs)


def test_the_objective_gets_the_features_before_and_after_specaugment(digits, tmp_path):
    """A distillation teacher must be able to see what it labelled (features without SpecAugment)."""
    train, _ = digits
    recipe = load_recipe(micro_recipe(tmp_path / "run", train, None,
                                      data={"num_workers": 0, "batch_size": 4},
                                      features={"specaugment": {"freq_masks": 2, "freq_width": 8, "time_masks": 2,
                                                                "time_width": 20}}))
    recorder = RecordingObjective()
    trainer = Trainer(recipe, lambda context: recorder)
    batch = next(iter(trainer.loader))
    trainer.step([batch])
    (features,) = recorder.features
    clean, frame_lengths = trainer.featurizer(batch.audio, batch.audio_lens)
    assert torch.equal(features.clean, clean)
    augmented = trainer.specaugment(clean, frame_lengths, generator_for_step(recipe.train.seed, 0, 0))
    assert torch.equal(features.seen, augmented) and not torch.equal(features.seen, clean)
