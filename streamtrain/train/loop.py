"""The training loop: one function, read top to bottom.

get batch -> featurize on the device (+ SpecAugment) -> forward -> loss ->
backward (in micro-batches; more of them after an out-of-memory error) ->
clip -> step -> log -> maybe evaluate -> maybe checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from streamtrain.data import StreamLoader
from streamtrain.distill.objective import Distillation, load_distillation, pseudo_labels
from streamtrain.features import SpecAugment, build_featurizer, generator_for_step
from streamtrain.features.cache import cached_features, check_feature_column
from streamtrain.train import checkpoint as ckpt
from streamtrain.train.audit import AuditLog, encode_ids, next_session
from streamtrain.train.backoff import OomBackoff
from streamtrain.train.config import Recipe, validate
from streamtrain.train.evaluate import ErrorCounts, evaluate
from streamtrain.train.model import IGNORE_INDEX, TextCodec, build_model, load_tokenizer
from streamtrain.train.plot import plot_history

log = logging.getLogger("streamtrain.train")

MODEL_DIR = "model"


@dataclass
class Progress:
    """Counters saved in every checkpoint (trainer.json)."""

    step: int = 0
    samples: int = 0
    audio_seconds: float = 0.0
    train_pieces: int = 1
    eval_pieces: int = 1
    history: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)


@dataclass
class TrainResult:
    run_dir: Path
    progress: Progress
    stopped_by_signal: bool


class StopRequest:
    """SIGTERM / SIGINT ask the loop to finish the step, checkpoint and exit 0."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        log.warning("received %s: finishing this step, then checkpointing", signal.Signals(signum).name)
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(recipe: Recipe, resume: bool = True) -> TrainResult:
    validate(recipe)
    cfg = recipe.train
    run_dir = Path(cfg.output_dir)
    accelerator = Accelerator(
        cpu=cfg.cpu, mixed_precision=cfg.mixed_precision, log_with="tensorboard", project_dir=str(run_dir)
    )
    device = accelerator.device
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)  # model initialisation; dropout continues from here

    # -- the pieces ----------------------------------------------------------------
    tokenizer = load_tokenizer(recipe.model)
    codec = TextCodec(tokenizer, recipe.model.prompt, recipe.model.eos_token, recipe.model.max_target_tokens)
    featurizer = build_featurizer(recipe.features.name, **recipe.features.params).to(device)
    specaugment = SpecAugment(**recipe.features.specaugment).to(device) if recipe.features.specaugment else None
    model = build_model(recipe.model, codec, featurizer.n_mels, featurizer.n_frames)
    if recipe.model.compile:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.optim.lr, betas=tuple(recipe.optim.betas), weight_decay=recipe.optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(recipe))
    model, optimizer = accelerator.prepare(model, optimizer)
    loader = StreamLoader(
        recipe.data.train,
        batch_size=recipe.data.batch_size,
        batch_seconds=recipe.data.batch_seconds,
        max_seconds=recipe.data.max_seconds,
        seed=cfg.seed,
        num_workers=recipe.data.num_workers,
        block_shards=recipe.data.block_shards,
        sample_rate=featurizer.sample_rate,
        on_bad_sample=recipe.data.on_bad_sample,
        cache_dir=recipe.data.cache_dir,
        cache_limit=recipe.data.cache_limit,
        columns=[c for c in (recipe.features.cache, recipe.distill.labels) if c],
        pin_memory=device.type == "cuda",
    )
    if recipe.features.cache:
        check_feature_column(loader.columns[0], featurizer)
    distillation = load_distillation(recipe.distill, loader.columns, model, device)

    # -- resume or start -----------------------------------------------------------
    progress = Progress(train_pieces=cfg.grad_accum)
    if accelerator.is_main_process:
        ckpt.remove_partial_checkpoints(run_dir)
        if not resume:
            for stale in (ckpt.checkpoint_root(run_dir), run_dir / "audit"):
                if stale.exists():
                    log.warning("--no-resume: removing %s from an earlier run", stale)
                    shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    found = ckpt.newest_valid_checkpoint(run_dir) if resume else None
    if found is not None:
        path, tensors, trainer = found
        accelerator.unwrap_model(model).load_state_dict(tensors["model"])
        optimizer.load_state_dict(tensors["optimizer"])
        scheduler.load_state_dict(tensors["scheduler"])
        if accelerator.scaler is not None and tensors.get("scaler"):
            accelerator.scaler.load_state_dict(tensors["scaler"])
        rng = tensors["rng"]
        if accelerator.process_index < len(rng["torch"]):  # exact only with the same number of ranks
            torch.set_rng_state(rng["torch"][accelerator.process_index])
            if torch.cuda.is_available() and rng.get("cuda"):
                torch.cuda.set_rng_state(rng["cuda"][accelerator.process_index])
        loader.load_state_dict(trainer["loader"])
        progress = Progress(**trainer["progress"])
        accelerator.print(f"resumed from {path} (step {progress.step}, epoch {loader.epoch})")
    session = _broadcast(next_session(run_dir) if accelerator.is_main_process else None)
    audit = AuditLog(run_dir, session, accelerator.process_index, accelerator.num_processes, progress.step)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        accelerator.init_trackers("streamtrain", config=_flat(recipe.to_dict()))
    train_backoff = OomBackoff("the training step", progress.train_pieces)
    eval_backoff = OomBackoff("evaluation", progress.eval_pieces)

    def run_evaluation() -> dict | None:
        if not recipe.data.validation:
            return None
        eval_loader = StreamLoader(
            recipe.data.validation, batch_size=recipe.eval.batch_size, epochs=1, num_workers=recipe.data.num_workers,
            sample_rate=featurizer.sample_rate, rank=accelerator.process_index,
            world_size=accelerator.num_processes, equalize_ranks=False,
        )
        result = evaluate(accelerator.unwrap_model(model), featurizer, codec, eval_loader, device,
                          accelerator.autocast, eval_backoff, recipe.eval.max_samples)
        model.train()
        counts = ErrorCounts.from_tensor(accelerator.reduce(result.counts.as_tensor().to(device), "sum").cpu())
        record = {"step": progress.step, "wer": counts.wer, "cer": counts.cer, "utterances": counts.utterances}
        progress.evaluations.append(record)
        progress.eval_pieces = eval_backoff.pieces
        accelerator.print(f"step {progress.step}: validation WER {100 * counts.wer:.2f}% CER {100 * counts.cer:.2f}% "
                          f"on {counts.utterances} utterances")
        if accelerator.is_main_process:
            accelerator.log({"eval/wer": counts.wer, "eval/cer": counts.cer}, step=progress.step)
            plot_history(progress.history, progress.evaluations, run_dir / "metrics.png")
        return record

    def save_checkpoint() -> None:
        loader_state = loader.state_dict()  # a collective: merged over ranks
        rng = gather_object([torch.get_rng_state()])
        cuda_rng = gather_object([torch.cuda.get_rng_state()]) if torch.cuda.is_available() else []
        audit.flush()
        progress.train_pieces = train_backoff.pieces
        if accelerator.is_main_process:
            tensors = {
                "model": accelerator.unwrap_model(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "rng": {"torch": rng, "cuda": cuda_rng},
            }
            trainer = {
                "step": progress.step,
                "epoch": loader.epoch,
                "world_size": accelerator.num_processes,
                "progress": asdict(progress),
                "loader": loader_state,
                "recipe": recipe.to_dict(),
            }
            ckpt.save_checkpoint(run_dir, progress.step, tensors, trainer, cfg.keep_checkpoints)
        accelerator.wait_for_everyone()

    # -- the loop ------------------------------------------------------------------
    if recipe.eval.at_start and progress.step == 0:
        run_evaluation()
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=progress.step, disable=not (cfg.progress and accelerator.is_main_process),
               unit="step", dynamic_ncols=True)
    window = {"start": time.perf_counter(), "wait": 0.0, "samples": 0, "audio": 0.0}
    stopped_by_signal = False
    batches = iter(loader)
    with StopRequest() as stop:
        while progress.step < cfg.max_steps:
            waited = time.perf_counter()
            batch = next(batches)
            window["wait"] += time.perf_counter() - waited
            epoch = batch["epoch"]
            for event in loader.pop_events():  # the epoch's plan, samples left out or skipped, epoch ends
                audit.add({**event, "step": progress.step + 1})

            audio, lengths = batch["audio"].to(device, non_blocking=True), batch["audio_lens"].to(device)
            cached = cached_features(batch, device) if recipe.features.cache else None
            texts, keep = pseudo_labels(batch) if recipe.distill.labels else (batch["text"], None)
            targets = codec.targets(texts)
            inputs, labels = targets.decoder_input_ids.to(device), targets.labels.to(device)
            if keep is not None:  # pseudo-labels filtered out by `label --max-wer` add nothing
                labels = labels.masked_fill(~keep.to(device)[:, None], IGNORE_INDEX)
            total_tokens = max(int((labels != IGNORE_INDEX).sum()), 1)
            augment_generator = generator_for_step(cfg.seed, progress.step)

            def forward_backward(pieces: list[slice]) -> float:
                loss_sum = 0.0
                for number, piece in enumerate(pieces):
                    last = number == len(pieces) - 1
                    with contextlib.nullcontext() if last else accelerator.no_sync(model):
                        loss = micro_batch_loss(model, featurizer, specaugment, augment_generator, accelerator,
                                                audio[piece], lengths[piece], inputs[piece], labels[piece],
                                                cached=None if cached is None else (cached[0][piece], cached[1][piece]),
                                                distillation=distillation)
                        accelerator.backward(loss / total_tokens)
                    loss_sum += float(loss.detach())
                return loss_sum / total_tokens

            loss = train_backoff.run(len(audio), forward_backward, before_retry=lambda: optimizer.zero_grad(set_to_none=True))
            if recipe.optim.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), recipe.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            progress.step += 1
            progress.samples += len(batch["keys"])
            progress.audio_seconds += float(batch["seconds"].sum())
            window["samples"] += len(batch["keys"])
            window["audio"] += float(batch["seconds"].sum())
            audit.add({"event": "step", "step": progress.step, "epoch": epoch, "ids": encode_ids(batch["sample_ids"])})

            if progress.step % cfg.log_every == 0 or progress.step == cfg.max_steps:
                elapsed = time.perf_counter() - window["start"]
                entry = {
                    "step": progress.step,
                    "loss": loss,
                    "lr": scheduler.get_last_lr()[0],
                    "samples_per_s": window["samples"] / elapsed * accelerator.num_processes,
                    "audio_hours_per_s": window["audio"] / 3600 / elapsed * accelerator.num_processes,
                    "data_wait": window["wait"] / elapsed,
                    "epoch": epoch,
                }
                progress.history.append(entry)
                postfix = dict(loss=f"{loss:.3f}", lr=f"{entry['lr']:.2e}", sps=f"{entry['samples_per_s']:.1f}",
                               audio_h_s=f"{entry['audio_hours_per_s']:.4f}", wait=f"{100 * entry['data_wait']:.0f}%")
                if bar.disable:  # no bar (not a terminal, or train.progress=false): a plain line instead
                    accelerator.print(f"step {progress.step}/{cfg.max_steps} epoch {epoch} "
                                      + " ".join(f"{k}={v}" for k, v in postfix.items()))
                else:
                    bar.set_postfix(**postfix)
                accelerator.log({f"train/{k}": v for k, v in entry.items() if k != "step"}, step=progress.step)
                window = {"start": time.perf_counter(), "wait": 0.0, "samples": 0, "audio": 0.0}
            bar.update(1)

            if recipe.eval.every and progress.step % recipe.eval.every == 0 and progress.step < cfg.max_steps:
                run_evaluation()
            stop_now = _any_rank(accelerator, stop.requested)
            if stop_now or progress.step % cfg.checkpoint_every == 0 or progress.step == cfg.max_steps:
                save_checkpoint()
            if stop_now:
                stopped_by_signal = True
                accelerator.print(f"stopped by signal at step {progress.step}; checkpoint saved")
                break
    bar.close()

    if not stopped_by_signal:
        run_evaluation()
        save_model(accelerator, model, tokenizer, featurizer, recipe, run_dir / MODEL_DIR)
        if progress.evaluations:
            save_checkpoint()  # keep the final evaluation in the counters
    audit.flush()
    accelerator.end_training()
    return TrainResult(run_dir, progress, stopped_by_signal)


def micro_batch_loss(
    model, featurizer, specaugment, generator, accelerator, audio, lengths, inputs, labels, cached=None,
    distillation: Distillation | None = None,
) -> torch.Tensor:
    """Summed token loss of one micro-batch (the caller divides by the batch's tokens).

    Cross-entropy on ``labels``; with ``distillation``, alpha * CE + beta * T^2 *
    KL(teacher || student) at temperature T over the same tokens. ``cached``:
    (features, frame lengths) from a feature column, used instead of the featurizer.
    """
    with accelerator.autocast():
        features, frame_lengths = cached if cached is not None else featurizer(audio, lengths)
        if specaugment is not None:
            features = specaugment(features, frame_lengths, generator)
        logits = model(input_features=features, decoder_input_ids=inputs).logits
    cross_entropy = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if distillation is None:
        return cross_entropy
    return distillation.loss(cross_entropy, logits, features, inputs, labels != IGNORE_INDEX)


def lr_factor(recipe: Recipe):
    warmup, total, schedule = recipe.optim.warmup_steps, recipe.train.max_steps, recipe.optim.schedule

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def save_model(accelerator, model, tokenizer, featurizer, recipe: Recipe, out: Path) -> None:
    """Hugging Face format that transformers' ASR pipeline reads as streamtrain does (see train/export.py)."""
    from streamtrain.train.export import export_model

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        export_model(accelerator.unwrap_model(model), tokenizer, featurizer, recipe, out)
        accelerator.print(f"model saved to {out}")
    accelerator.wait_for_everyone()


def _any_rank(accelerator: Accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, "sum").item() > 0)


def _broadcast(value):
    """Rank 0's value, on every rank."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
