"""The run's PNG: loss, WER and throughput over steps, rewritten at each evaluation."""

from __future__ import annotations

from pathlib import Path

from streamtrain.storage.atomic import atomic_file


def plot_history(history: list[dict], evaluations: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, wer_axis, speed_axis) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    steps = [h["step"] for h in history]
    loss_axis.plot(steps, [h["loss"] for h in history], color="tab:blue")
    loss_axis.set_ylabel("training loss")
    loss_axis.set_yscale("log")
    if evaluations:
        eval_steps = [e["step"] for e in evaluations]
        wer_axis.plot(eval_steps, [100 * e["wer"] for e in evaluations], marker="o", label="WER")
        wer_axis.plot(eval_steps, [100 * e["cer"] for e in evaluations], marker="s", label="CER")
        wer_axis.legend()
    wer_axis.set_ylabel("validation error (%)")
    speed_axis.plot(steps, [h["samples_per_s"] for h in history], color="tab:green")
    speed_axis.set_ylabel("samples / s")
    speed_axis.set_xlabel("optimizer step")
    for axis in (loss_axis, wer_axis, speed_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_file(path) as f:
        figure.savefig(f, format="png", dpi=90)
    plt.close(figure)
