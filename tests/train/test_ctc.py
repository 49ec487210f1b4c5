"""The auxiliary CTC loss: what it scores, and a run that trains, checkpoints and exports with its head."""

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import WhisperForConditionalGeneration

from streamtrain.train import checkpoint as ckpt
from streamtrain.train.ctc import AuxiliaryCtc
from streamtrain.train.model import IGNORE_INDEX
from tests.support.cli import run_cli
from tests.support.runs import micro_recipe

EOS, START = 0, 1
X = IGNORE_INDEX


def test_the_loss_scores_spoken_tokens_and_leaves_out_rows_without_labels():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 13 + 1)
    ctc = AuxiliaryCtc(head, 0.25, not_spoken=[EOS, START])
    encoded = torch.randn(4, 10, 8)
    frames = torch.tensor([20, 13, 20, 4])  # the encoder halves them: 10, 7, 10, 2
    labels = torch.tensor([[5, 6, 6, EOS],  # "5 6 6" then the end token
                           [X, X, X, X],  # no label (a distillation label filtered out): left out
                           [7, EOS, X, X],
                           [EOS, X, X, X]])  # silence: towards blanks only
    log_probs = F.log_softmax(head(encoded[[0, 2, 3]]), dim=-1).transpose(0, 1)
    expected = F.ctc_loss(log_probs, torch.tensor([5, 6, 6, 7]), torch.tensor([10, 10, 2]), torch.tensor([3, 1, 0]),
                          blank=13, reduction="sum")
    assert torch.allclose(ctc.loss(encoded, frames, labels), expected)
    attention = torch.tensor(3.0)
    assert torch.allclose(ctc.mix(attention, encoded, frames, labels), 0.75 * attention + 0.25 * expected)


def test_the_loss_trains_the_head_and_the_encoder_output():
    head = torch.nn.Linear(8, 14)
    encoded = torch.randn(2, 6, 8, requires_grad=True)
    loss = AuxiliaryCtc(head, 0.3, [EOS]).loss(encoded, torch.tensor([12, 9]), torch.tensor([[3, 4, EOS], [2, EOS, X]]))
    loss.backward()
    assert head.weight.grad.abs().sum() > 0 and encoded.grad[:, :5].abs().sum() > 0
    assert encoded.grad[1, 5:].abs().sum() == 0  # beyond the second utterance's 9 frames (5 encoder frames)


def test_a_weight_of_one_is_refused(digits, tmp_path):
    refused = run_cli("train", str(micro_recipe(tmp_path / "run", *digits)), "model.ctc_weight=1.0", check=False)
    assert refused.code == 2 and "model.ctc_weight: must be within 0 .. 1" in refused.err


@pytest.mark.slow
def test_a_run_checkpoints_the_head_exports_without_it_and_a_resume_without_ctc_names_the_change(digits, tmp_path):
    run = tmp_path / "run"
    recipe = micro_recipe(run, *digits, model={"ctc_weight": 0.3}, train={"max_steps": 4, "checkpoint_every": 4})
    run_cli("train", str(recipe))
    tensors, _ = ckpt.load_checkpoint(ckpt.list_checkpoints(run)[-1])
    assert tensors["model"]["ctc_head.weight"].shape == (14, 32)  # 13 tokens and the blank, from d_model 32
    with safe_open(run / "model" / "model.safetensors", "pt") as exported:
        assert not [name for name in exported.keys() if "ctc" in name]
    model, info = WhisperForConditionalGeneration.from_pretrained(run / "model", output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    refused = run_cli("train", str(recipe), "model.ctc_weight=0", "train.max_steps=8", check=False)
    assert refused.code != 0 and "model.ctc_weight: 0.3 -> 0" in refused.err
