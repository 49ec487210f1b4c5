"""The training loop, read top to bottom like a torchtune recipe.

    trainer = Trainer(recipe, objective_for)   # set up: accelerator, model, optimizer, loader
    trainer.restore()                          # the newest valid checkpoint, chosen by rank 0
    trainer.fit(stop)                          # until max_steps or a signal

One optimizer step (``step``): take ``grad_accum`` batches from the loader ->
their target texts from the objective -> for each batch, in ``micro_batches``
pieces (more after an out-of-memory error): features on the device (+
SpecAugment) -> forward -> loss -> backward -> clip -> step. Then log, maybe
evaluate, maybe checkpoint. Distillation and the feature cache are objects the
step calls (``Objective``, ``LiveFeatures`` / ``CachedFeatures``), not branches.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from streamtrain.loader import Batch, StreamLoader
from streamtrain.loader.state import Stateful
from streamtrain.features import SpecAugment, build_featurizer, generator_for_step
from streamtrain.features.feature_cache import check_feature_column
from streamtrain.pack.progress import ProgressReport, message
from streamtrain.storage.location import LocationError
from streamtrain.storage.output import OutputError
from streamtrain.storage.remote import RetryPolicy
from streamtrain.train import checkpoint as ckpt
from streamtrain.train.audit import AUDIT_DIR, AuditLog, encode_ids, next_session
from streamtrain.train.backoff import OomBackoff
from streamtrain.train.config import (MixtureEntry, Recipe, RecipeError, train_batch_size, train_max_seconds, validate,
                                      window_seconds)
from streamtrain.train.ctc import attach_ctc_head
from streamtrain.train.evaluate import ErrorCounts, evaluate, rank_quotas
from streamtrain.train.export import export_model
from streamtrain.train.inputs import CachedFeatures, LiveFeatures
from streamtrain.train.launch import keep_global_batch, resolve_pretrained, use_cpu
from streamtrain.train.model import IGNORE_INDEX, TextCodec, build_model, frozen_to_eval, load_tokenizer
from streamtrain.train.normalizer import build_normalizer, default_normalizer
from streamtrain.train.whisper_tokenizer import timestamp_ids
from streamtrain.train.window_targets import row_targets, timestamp_draw
from streamtrain.train.loss import ObjectiveContext, ObjectiveFactory, StepFeatures, cross_entropy_objective
from streamtrain.train.plot import plot_history
from streamtrain.train.run_dir import RunLock, recipe_changes
from streamtrain.train.run_folder import RunFolder
from streamtrain.train.store_lock import LeaseError
from streamtrain.train.signals import StopRequest

log = logging.getLogger("streamtrain.train")

MODEL_DIR = "model"
TRACKER = "streamtrain"  # accelerate's tensorboard logs: RUN/streamtrain/


@dataclass
class Progress:
    """Counters saved in every checkpoint (trainer.json); samples and audio are over all ranks."""

    step: int = 0
    samples: int = 0
    audio_seconds: float = 0.0
    micro_batches: int = 1  # pieces each batch is split into (the out-of-memory back-off raises it)
    eval_pieces: int = 1
    history: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict:
        """The counters as JSON."""
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``'s counters."""
        loaded = Progress(**state)  # an unknown counter is a TypeError naming it
        for name in (f.name for f in fields(self)):
            setattr(self, name, getattr(loaded, name))


@dataclass
class TrainResult:
    run_dir: str  # the run folder as it may be printed (a URL without credentials)
    progress: Progress
    stopped_by_signal: bool
    main_process: bool = True  # rank 0: the one that prints the run's summary


class Trainer:
    """One training run of a recipe, on every rank that accelerate started."""

    def __init__(self, recipe: Recipe, objective_for: ObjectiveFactory = cross_entropy_objective):
        validate(recipe)
        self.recipe, cfg = recipe, recipe.train
        #: the run folder; at a URL its files are written to ``run.local`` first, then published
        try:
            self.run = RunFolder(cfg.output_dir, recipe.data.storage_options)
        except (LocationError, OutputError) as error:
            raise RecipeError(f"train.output_dir: {error}") from None
        self.accelerator = Accelerator(cpu=use_cpu(cfg.cpu), mixed_precision=cfg.mixed_precision, log_with="tensorboard",
                                       project_dir=str(self.run.local))
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.seed)  # model initialisation: the same on every rank
        #: the recipe's model section, with model.pretrained as a folder (a hub id found in the cache)
        model_config = replace(recipe.model, pretrained=resolve_pretrained(recipe.model.pretrained)) \
            if recipe.model.pretrained else recipe.model
        self.tokenizer = load_tokenizer(model_config)
        if recipe.model.timestamp_probability and not timestamp_ids(self.tokenizer):
            raise RecipeError("model.timestamp_probability: the tokenizer has no timestamp tokens (<|0.00|> .. "
                              "<|30.00|>; Whisper's published tokenizers have them)")
        self.codec = TextCodec(self.tokenizer, recipe.model.prompt, recipe.model.eos_token,
                               recipe.model.max_target_tokens)
        self.normalizer = recipe.eval.normalizer or default_normalizer(self.codec.prompt, self.tokenizer)
        self.normalize = build_normalizer(self.normalizer, model_config.tokenizer or model_config.pretrained) \
            if recipe.data.validation else None
        self.featurizer = build_featurizer(recipe.features.name, **recipe.features.params).to(self.device)
        self.specaugment = SpecAugment(**recipe.features.specaugment).to(self.device) \
            if recipe.features.specaugment else None
        model = build_model(model_config, self.codec, self.featurizer.n_mels, self.featurizer.n_frames)
        self.ctc = attach_ctc_head(model, recipe.model.ctc_weight, self.tokenizer)
        torch.manual_seed(_rank_seed(cfg.seed, self.rank))  # dropout: each rank draws its own masks
        if recipe.model.compile:
            model = torch.compile(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.optim.lr, betas=tuple(recipe.optim.betas),
                                      weight_decay=recipe.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(recipe))
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.mixture = self._mixture_prompts()
        self.loader = self._train_loader()
        self.features = CachedFeatures() if recipe.features.cache else LiveFeatures(self.featurizer)
        if recipe.features.cache:
            check_feature_column(self.loader.columns[0], self.featurizer)
        self.objective = objective_for(ObjectiveContext(
            distill=recipe.distill, columns=self.loader.columns, student=self.accelerator.unwrap_model(self.model),
            featurizer=self.featurizer, prompt=self.codec.prompt, device=self.device))
        self.progress = Progress(micro_batches=cfg.micro_batches)
        self.grad_accum = cfg.grad_accum  # loader batches a step: the recipe's, or kept from a resume's global batch
        self.audit: AuditLog | None = None
        self.lock: RunLock | None = None  # rank 0's, held by ``train``

    def _mixture_prompts(self) -> list[MixtureEntry]:
        """Each training dataset's entry (language, task), in the loader's order; checked against the prompt."""
        train = self.recipe.data.train
        entries = {train: MixtureEntry()} if isinstance(train, str) else \
            {url: entry if isinstance(entry, MixtureEntry) else MixtureEntry(entry) for url, entry in train.items()}
        has_language, has_task = self.codec.slots()
        for url, entry in entries.items():
            for key, value, slot in (("language", entry.language, has_language), ("task", entry.task, has_task)):
                if value is not None and not slot:
                    raise RecipeError(f"data.train.{url}.{key}: model.prompt {self.codec.prompt} names no {key} "
                                      f"token for {value!r} to replace")
            try:
                self.codec.prompt_for(entry.language, entry.task)
            except RecipeError as error:
                raise RecipeError(f"data.train.{url}: {error}") from None
        return list(entries.values())

    def _prompts(self, batch: Batch) -> list[list[int]]:
        """Each sample's prompt ids: its manifest's ``language``, else its dataset's, and its dataset's task."""
        datasets = self.loader.datasets_of(batch.sample_ids.numpy(), batch.epoch) if len(self.mixture) > 1 \
            else [0] * batch.size
        prompts = []
        for meta, dataset, sample_id in zip(batch.meta, datasets, batch.sample_ids.tolist()):
            entry = self.mixture[dataset]
            try:
                prompts.append(self.codec.prompt_for(meta.get("language") or entry.language, entry.task))
            except RecipeError as error:
                raise RecipeError(f"{self.loader.describe(sample_id, batch.epoch)}: {error}") from None
        return prompts

    def _train_loader(self) -> StreamLoader:
        data = self.recipe.data
        weights = {url: entry.weight for url, entry in zip(data.train, self.mixture)} \
            if isinstance(data.train, dict) else data.train
        return StreamLoader(
            weights, batch_size=train_batch_size(data, self.recipe.features),
            max_seconds=train_max_seconds(data, self.recipe.features),
            fill_windows=window_seconds(self.recipe.features) if data.fill_windows else None,
            seed=self.recipe.train.seed, num_workers=data.num_workers, block_shards=data.block_shards,
            sample_rate=self.featurizer.sample_rate, on_bad_sample=data.on_bad_sample, cache_dir=data.cache_dir,
            cache_limit=data.cache_limit, storage_options=data.storage_options,
            retry=RetryPolicy(stall_timeout=data.stall_timeout),
            columns=[c for c in (self.recipe.features.cache, self.recipe.distill.labels) if c],
            pin_memory=self.device.type == "cuda",
        )  # rank and world size: torch.distributed's, so state_dict() merges over ranks

    # -- restore -------------------------------------------------------------------------

    def restore(self, resume: bool = True) -> None:
        """Continue from the newest valid checkpoint (rank 0 chooses it for every rank), or start over."""
        accelerator = self.accelerator
        if accelerator.is_main_process:
            ckpt.remove_partial_checkpoints(self.run)
            if not resume:
                for stale in (ckpt.CHECKPOINTS, AUDIT_DIR):
                    if self.run.names(stale):
                        log.warning("--no-resume: removing %s/%s from an earlier run", self.run, stale)
                        self.run.remove_folder(stale)
        chosen = _broadcast(_newest_checkpoint(self.run) if resume and accelerator.is_main_process else None)
        if isinstance(chosen, dict):  # every checkpoint damaged: every rank stops with rank 0's message
            raise ckpt.CheckpointError(chosen["error"])
        if chosen is not None:  # its name: at a URL each rank downloads it (ranks may be on other nodes)
            self._load(ckpt.fetch_checkpoint(self.run, chosen))
        session = _broadcast(next_session(self.run) if accelerator.is_main_process else None)
        self.audit = AuditLog(self.run, session, self.rank, accelerator.num_processes, self.progress.step)
        if accelerator.is_main_process:
            (self.run.local / "recipe.yaml").write_text(yaml.safe_dump(self.recipe.to_dict(), sort_keys=False))
            self.run.publish("recipe.yaml")
            accelerator.init_trackers("streamtrain", config=_flat(self.recipe.to_dict()))

    def checkpointed(self) -> dict[str, Stateful]:
        """The pieces a checkpoint's trainer.json holds, by key: each ``Stateful``, with JSON values."""
        return {"loader": self.loader, "progress": self.progress}

    def _load(self, path: Path) -> None:
        tensors, trainer = ckpt.load_checkpoint(path)
        changes = recipe_changes(trainer["recipe"], self.recipe.to_dict())
        try:
            self.accelerator.unwrap_model(self.model).load_state_dict(tensors["model"])
            self.optimizer.load_state_dict(tensors["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:  # torch's message lists every tensor: not shown
            raise ckpt.CheckpointError(
                f"{path}: the model or optimizer does not fit this checkpoint ({type(error).__name__}); the recipe "
                f"changed since: {'; '.join(changes) or 'nothing'}; resume with that run's recipe, "
                "or start over with --no-resume or another train.output_dir") from None
        self.scheduler.load_state_dict(tensors["scheduler"])
        if self.accelerator.scaler is not None and tensors.get("scaler"):
            self.accelerator.scaler.load_state_dict(tensors["scaler"])
        rng = tensors["rng"]
        if self.rank < len(rng["torch"]):  # exact only with the same number of ranks
            torch.set_rng_state(rng["torch"][self.rank])
            if torch.cuda.is_available() and rng.get("cuda"):
                torch.cuda.set_rng_state(rng["cuda"][self.rank])
        for name, piece in self.checkpointed().items():
            piece.load_state_dict(trainer[name])
        del tensors  # the model and optimizer hold their own copies now
        gc.collect()
        self.accelerator.print(f"resumed from {self.run}/{ckpt.CHECKPOINTS}/{path.name} "
                               f"(step {self.progress.step}, epoch {self.loader.epoch})")
        if changes:
            self.accelerator.print("the recipe changed since that checkpoint:\n  " + "\n  ".join(changes))
        saved_recipe_accum = trainer["recipe"]["train"]["grad_accum"]
        self.grad_accum, said = keep_global_batch(
            trainer["world_size"], trainer.get("grad_accum", saved_recipe_accum), saved_recipe_accum,
            self.accelerator.num_processes, self.recipe.train.grad_accum)
        if said:
            self.accelerator.print(said)

    # -- the loop ------------------------------------------------------------------------

    def fit(self, stop: StopRequest) -> TrainResult:
        cfg, progress = self.recipe.train, self.progress
        if self.recipe.eval.at_start and progress.step == 0 and not stop.requested:
            self.evaluate()
        self._train_mode()
        meter = _Meter(self.accelerator)
        report = ProgressReport("train", cfg.max_steps, "steps", initial=progress.step, every=cfg.log_every,
                                enabled=self.accelerator.is_main_process, bar=None if cfg.progress else False)
        # closed here, even when a step raises: the workers ignore SIGTERM, so multiprocessing's exit
        # handler (terminate, then join) would wait for them forever
        with report, contextlib.closing(iter(self.loader)) as batches:
            while progress.step < cfg.max_steps and not _any_rank(self.accelerator, stop.requested):
                taken = [self._next(batches, meter) for _ in range(self.grad_accum)]
                loss = self.step(taken)
                progress.step += 1
                meter.add(taken)
                for batch in taken:
                    self.audit.add({"event": "step", "step": progress.step, "epoch": batch.epoch,
                                    "ids": encode_ids(batch.sample_ids)})
                if progress.step % cfg.log_every == 0 or progress.step == cfg.max_steps:
                    self._log(loss, meter, report, taken[-1].epoch)
                report.update(1)  # on a log step without a bar: the plain line
                if self.recipe.eval.every and progress.step % self.recipe.eval.every == 0 \
                        and progress.step < cfg.max_steps:
                    self.evaluate()
                if progress.step % cfg.checkpoint_every == 0 or progress.step == cfg.max_steps:
                    meter.settle(progress)
                    self.save()
        meter.settle(progress)
        return self.finish(stop)

    def _train_mode(self) -> None:
        self.model.train()
        frozen_to_eval(self.accelerator.unwrap_model(self.model))

    def _next(self, batches, meter: "_Meter") -> Batch:
        waited = time.perf_counter()
        batch = next(batches)
        meter.wait += time.perf_counter() - waited
        for event in self.loader.pop_events():  # the epoch's plan, samples left out or skipped, epoch ends
            self.audit.add({**event, "step": self.progress.step + 1})
        return batch

    def step(self, batches: list[Batch]) -> float:
        """One optimizer step over ``batches``; the mean loss per target token."""
        work = []
        draw = timestamp_draw(self.recipe.train.seed, self.progress.step, self.rank)
        for batch in (b for b in batches if b.size):
            rows = row_targets(batch, *self.objective.texts(batch), self.recipe.model.timestamp_probability,
                               self.featurizer.chunk_seconds, draw)  # one row per window (or utterance)
            prompts = self._prompts(batch)  # a window takes its first utterance's language and task
            firsts = torch.searchsorted(batch.window, torch.arange(len(rows.texts))).tolist()
            targets = self.codec.targets(rows.texts, [prompts[i] for i in firsts], rows.timestamps)
            keep = rows.keep
            labels = targets.labels if keep is None else targets.labels.masked_fill(~keep[:, None], IGNORE_INDEX)
            work.append((len(rows.texts), self.features.prepare(batch, self.device),
                         targets.decoder_input_ids.to(self.device), labels.to(self.device)))
        tokens = max(sum(int(labels.ne(IGNORE_INDEX).sum()) for *_, labels in work), 1)
        backoff = OomBackoff("the training step", self.progress.micro_batches)
        loss = backoff.run(max((size for size, *_ in work), default=1),
                           lambda pieces: self._forward_backward(work, pieces, tokens),
                           before_retry=lambda: self.optimizer.zero_grad(set_to_none=True))
        self.progress.micro_batches = backoff.pieces
        if self.recipe.optim.grad_clip:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.recipe.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def _forward_backward(self, work, pieces: list[slice], tokens: int) -> float:
        """Backward over every piece of every batch; gradients sync across ranks on the last piece only.

        A rank whose batches hold no sample (all skipped as bad) runs one sample of silence with zero
        weight, so it still meets the other ranks at the gradient all-reduce.
        """
        if not work:
            return self._empty_step()
        generator = generator_for_step(self.recipe.train.seed, self.progress.step, self.rank)  # SpecAugment's
        steps = [(features_of, inputs[piece], labels[piece], piece) for size, features_of, inputs, labels in work
                 for piece in pieces if piece.start < size]
        total = 0.0
        for number, (features_of, inputs, labels, piece) in enumerate(steps):
            with contextlib.nullcontext() if number == len(steps) - 1 else self.accelerator.no_sync(self.model):
                with self.accelerator.autocast():
                    features, frames = features_of(piece)
                    seen = features if self.specaugment is None else self.specaugment(features, frames, generator)
                    outputs = self.model(input_features=seen, decoder_input_ids=inputs)
                loss = self.objective.loss(outputs.logits, labels,
                                           StepFeatures(features, seen, outputs.encoder_last_hidden_state), inputs)
                if self.ctc is not None:
                    loss = self.ctc.mix(loss, outputs.encoder_last_hidden_state, frames, labels)
                self.accelerator.backward(loss / tokens)
            total += float(loss.detach())
        return total / tokens

    def _empty_step(self) -> float:
        silence = torch.zeros(1, self.featurizer.sample_rate // 10, device=self.device)
        features, _ = self.featurizer(silence, torch.tensor([silence.shape[1]], device=self.device))
        inputs = torch.tensor([self.codec.prompt_ids], device=self.device)
        with self.accelerator.autocast():
            outputs = self.model(input_features=features, decoder_input_ids=inputs)
        unused = outputs.logits.float().sum()
        if self.ctc is not None:  # every trained tensor takes part in the all-reduce
            unused = unused + self.ctc.head(outputs.encoder_last_hidden_state.float()).sum()
        self.accelerator.backward(unused * 0.0)
        return 0.0

    def _log(self, loss: float, meter: "_Meter", report: ProgressReport, epoch: int) -> None:
        entry = {"step": self.progress.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                 **meter.take(), "epoch": epoch}
        self.progress.history.append(entry)
        report.show(loss=f"{loss:.3f}", lr=f"{entry['lr']:.2e}", **{"samples/s": f"{entry['samples_per_s']:.1f}",
                    "audio_h/s": f"{entry['audio_hours_per_s']:.4f}"}, wait=f"{100 * entry['data_wait']:.0f}%",
                    epoch=epoch)
        self.accelerator.log({f"train/{k}": v for k, v in entry.items() if k != "step"}, step=self.progress.step)

    def evaluate(self) -> dict | None:
        """WER / CER on the validation set, over all ranks."""
        recipe, accelerator = self.recipe, self.accelerator
        if not recipe.data.validation:
            return None
        loader = StreamLoader(recipe.data.validation, batch_size=recipe.eval.batch_size, epochs=1,
                              num_workers=recipe.data.num_workers, sample_rate=self.featurizer.sample_rate,
                              rank=self.rank, world_size=accelerator.num_processes, equalize_ranks=False,
                              storage_options=recipe.data.storage_options)
        backoff = OomBackoff("evaluation", self.progress.eval_pieces)
        quota = None  # eval.max_samples is over all ranks
        if recipe.eval.max_samples is not None:
            quota = rank_quotas(recipe.eval.max_samples, gather_object([loader.samples_left()]))[self.rank]
        result = evaluate(accelerator.unwrap_model(self.model), self.featurizer, self.codec, loader, self.device,
                          accelerator.autocast, backoff, quota, normalize=self.normalize)
        self._train_mode()
        counts = ErrorCounts.from_tensor(accelerator.reduce(result.counts.as_tensor().to(self.device), "sum").cpu())
        by_language: dict[str, ErrorCounts] = {}
        for ranks in gather_object([{k: c.as_tensor() for k, c in result.by_language.items()}]):
            for language, values in ranks.items():
                summed = by_language.get(language, ErrorCounts()).as_tensor() + values
                by_language[language] = ErrorCounts.from_tensor(summed)
        record = {"step": self.progress.step, "wer": counts.wer, "cer": counts.cer, "utterances": counts.utterances,
                  "normalizer": self.normalizer,
                  "wer_by_language": {k: c.wer for k, c in sorted(by_language.items())}}
        self.progress.evaluations.append(record)
        self.progress.eval_pieces = backoff.pieces
        if accelerator.is_main_process:
            message(f"step {self.progress.step}: validation WER {100 * counts.wer:.2f}% "
                    f"CER {100 * counts.cer:.2f}% on {counts.utterances} utterances (normalizer {self.normalizer})"
                    + "".join(f"; {k} {100 * c.wer:.2f}% ({c.utterances})" for k, c in sorted(by_language.items())))
            accelerator.log({"eval/wer": counts.wer, "eval/cer": counts.cer}, step=self.progress.step)
            plot_history(self.progress.history, self.progress.evaluations, self.run.local / "metrics.png")
            self.run.publish("metrics.png")
        return record

    def save(self) -> None:
        """A checkpoint: model, optimizer, scheduler, scaler, every rank's RNG, counters, loader state, recipe."""
        accelerator = self.accelerator
        lost = _broadcast(self.lock.lost if self.lock is not None else None)  # rank 0 holds the lock
        if lost:  # a lease taken over at a URL: the other run owns the folder now; every rank stops
            raise LeaseError(lost)
        # on every rank: the loader's state_dict is a collective (merged over ranks)
        states = {name: piece.state_dict() for name, piece in self.checkpointed().items()}
        rng = gather_object([torch.get_rng_state()])
        cuda_rng = gather_object([torch.cuda.get_rng_state()]) if torch.cuda.is_available() else []
        self.audit.flush()
        if accelerator.is_main_process:
            tensors = {
                "model": accelerator.unwrap_model(self.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "rng": {"torch": rng, "cuda": cuda_rng},
            }
            trainer = {
                "step": self.progress.step,
                "epoch": self.loader.epoch,
                "world_size": accelerator.num_processes,
                "grad_accum": self.grad_accum,
                **states,
                "recipe": self.recipe.to_dict(),
            }
            ckpt.save_checkpoint(self.run, self.progress.step, tensors, trainer, self.recipe.train.keep_checkpoints)
            self.run.publish_folder(TRACKER)
        accelerator.wait_for_everyone()

    def finish(self, stop: StopRequest) -> TrainResult:
        """Stopped by a signal: a checkpoint (if a step was taken since the last). Done: evaluate, export."""
        stopped = self.progress.step < self.recipe.train.max_steps
        if stopped:
            saved = any(c.name == f"step-{self.progress.step:08d}" for c in ckpt.list_checkpoints(self.run))
            if self.progress.step and not saved:
                self.save()
            self.accelerator.print(f"stopped by signal at step {self.progress.step}; "
                                   + ("checkpoint saved" if self.progress.step else "nothing to save"))
        else:
            self.evaluate()
            self.accelerator.wait_for_everyone()
            if self.accelerator.is_main_process:
                export_model(self.accelerator.unwrap_model(self.model), self.tokenizer, self.featurizer, self.recipe,
                             self.run.local / MODEL_DIR)
                self.run.publish_folder(MODEL_DIR, last="config.json")  # transformers reads config.json first
                self.accelerator.print(f"model saved to {self.run}/{MODEL_DIR}")
            if self.progress.evaluations:
                self.save()  # keep the final evaluation in the counters
        self.audit.flush()
        self.accelerator.end_training()
        if self.accelerator.is_main_process:
            self.run.publish_folder(TRACKER)  # the event files, closed
        return TrainResult(str(self.run), self.progress, stopped, self.accelerator.is_main_process)


def train(recipe: Recipe, resume: bool = True, objective_for: ObjectiveFactory = cross_entropy_objective,
          stop: StopRequest | None = None) -> TrainResult:
    """Set up, restore and run a recipe; the run folder is locked for the run's duration (by rank 0)."""
    with contextlib.ExitStack() as stack:
        stop = stop or stack.enter_context(StopRequest())
        trainer = Trainer(recipe, objective_for)
        stack.callback(trainer.run.close)
        if trainer.accelerator.is_main_process:
            trainer.lock = stack.enter_context(RunLock(trainer.run, recipe.train.lock_lease))
        trainer.accelerator.wait_for_everyone()
        trainer.restore(resume)
        return trainer.fit(stop)


class _Meter:
    """Throughput since the last log line, and samples not yet added to the progress; summed over ranks."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.started = time.perf_counter()
        self.wait = 0.0
        self.window = [0, 0.0]  # samples, audio seconds since the last log line
        self.unsettled = [0, 0.0]  # since the last settle

    def add(self, batches: list[Batch]) -> None:
        samples, audio = sum(b.size for b in batches), sum(float(b.seconds.sum()) for b in batches)
        for counts in (self.window, self.unsettled):
            counts[0] += samples
            counts[1] += audio

    def settle(self, progress: Progress) -> None:
        """Add every rank's samples and audio since the last call to ``progress`` (a collective)."""
        totals = torch.tensor(self.unsettled, dtype=torch.float64, device=self.accelerator.device)
        samples, audio = self.accelerator.reduce(totals, "sum").tolist()
        progress.samples += int(samples)
        progress.audio_seconds += audio
        self.unsettled = [0, 0.0]

    def take(self) -> dict:
        """samples/s and audio hours/s over all ranks, and the share of time this rank waited for data."""
        elapsed = time.perf_counter() - self.started
        totals = torch.tensor(self.window, dtype=torch.float64, device=self.accelerator.device)
        samples, audio = self.accelerator.reduce(totals, "sum").tolist()
        figures = {"samples_per_s": samples / elapsed, "audio_hours_per_s": audio / 3600 / elapsed,
                   "data_wait": self.wait / elapsed}
        self.started, self.wait, self.window = time.perf_counter(), 0.0, [0, 0.0]
        return figures


def _rank_seed(seed: int, rank: int) -> int:
    digest = hashlib.sha256(f"dropout:{seed}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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


def _any_rank(accelerator: Accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, "sum").item() > 0)


def _newest_checkpoint(run: RunFolder) -> str | dict | None:
    """The checkpoint to resume (its name), none, or ``{"error": message}`` for the other ranks to raise too."""
    try:
        newest = ckpt.newest_valid_checkpoint(run)
    except ckpt.CheckpointError as error:
        return {"error": str(error)}
    return None if newest is None else newest.name


def _broadcast(value):
    """Rank 0's value, on every rank."""
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
