"""The training loop: one process or many under torchrun.

:class:`Trainer` runs a whole job from a :class:`xclip.config.RunConfig`, in
parts one can call and test alone:

* :meth:`Trainer.setup` builds the model, data, optimiser, schedule, scaler and mixer;
* :meth:`Trainer.resume` restores a checkpoint (``train.resume``: ``auto`` or a path);
* :meth:`Trainer.run_epoch` trains one epoch with gradient accumulation
  (``DDP.no_sync`` on the micro-steps that do not step);
* :meth:`Trainer.micro_step` (forward + backward of one batch) and
  :meth:`Trainer.optimizer_step`; :meth:`Trainer.step` does both for one batch;
* :meth:`Trainer.save` writes a checkpoint atomically;
* :meth:`Trainer.evaluate` runs single- or multi-view evaluation;
* :meth:`Trainer.fit` does all of it and returns a summary dict (final
  metrics, paths, counts). :func:`train` is ``Trainer(cfg).fit()`` inside the
  process group.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import sys
import time
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xclip.config import RunConfig, dump_config, to_config
from xclip.data import build_data_loader, build_dataset, check_list_labels, read_labels, set_epoch
from xclip.model import create_model, load_pretrained, tokenize
from xclip.runtime import (DistInfo, all_reduce_sum, amp_dtype, autocast, barrier, cleanup, init_distributed,
                           keep_freed_memory)

from . import checkpoint as ckpt_lib
from .evaluate import evaluate
from .mixup import MixupCutmix, soft_target_cross_entropy
from .optim import build_optimizer, freeze_text
from .run_log import LOGGER_NAME, Metrics, file_only, fmt_time, setup_logger
from .schedule import CosineWarmupSchedule

__all__ = ["train", "Trainer", "NonFiniteLossError", "TrainForward", "amp_dtype_from_config", "setup_logger",
           "trim_tokens", "LOGGER_NAME"]


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""

    def __init__(self, step: int, epoch: int, value: float):
        self.step, self.epoch, self.value = step, epoch, value
        super().__init__(f"non-finite training loss {value} at optimiser step {step} (epoch {epoch}); "
                         "stopping instead of training through it (try a lower train.lr, train.amp=bf16 "
                         "or train.clip_grad)")


class TrainForward(nn.Module):
    """What DDP wraps: video -> logits against token ids or cached text features.

    With a frozen text encoder the class-text features are computed once
    and passed in (``text_is_features=True``); the video side, MIT and the
    prompt generator still run (and train) every step.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor, text: torch.Tensor, text_is_features: bool = False) -> torch.Tensor:
        if text_is_features:
            video_emb, patch_emb = self.model.encode_video(video)
            return self.model.logits_from_features(video_emb, patch_emb, text)
        return self.model(video, text)


def amp_dtype_from_config(amp: Any, device: torch.device) -> torch.dtype | None:
    """The training autocast dtype (kept for callers of the old name; see :func:`xclip.runtime.amp_dtype`)."""
    return amp_dtype(amp, device)


def trim_tokens(tokens: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
    """Drop the all-padding columns at the end of ``tokens [K, 77]``.

    Exact: the text tower is causal and reads its feature at <eot>, so
    trailing padding never changes a class feature; it only costs time, and
    a model with a shorter ``context_length`` (the demo's) needs it gone.
    """
    used = int((tokens != 0).sum(dim=1).max()) if tokens.numel() else 0
    ctx = int(getattr(getattr(model, "config", None), "context_length", tokens.shape[1]))
    if used > ctx:
        raise ValueError(f"a class prompt needs {used} tokens but the model's context_length is {ctx}; shorten the class "
                         "names or data.text_template")
    return tokens[:, : max(used, 1)]


def _test_kill_at_step(step: int) -> None:
    """Tests only: ``XCLIP_TEST_KILL_AT_STEP=N`` makes the process SIGKILL itself after optimiser step N
    (after that step's mid-epoch checkpoint, if one is due), so a resume test kills at a chosen step, not on a timer."""
    at = os.environ.get("XCLIP_TEST_KILL_AT_STEP")
    if at and int(at) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class _SkipBatchSampler:
    """Iterate a batch sampler, dropping its first ``skip`` batches (mid-epoch resume)."""

    def __init__(self, batch_sampler, skip: int):
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self):
        for i, b in enumerate(self.batch_sampler):
            if i >= self.skip:
                yield b

    def __len__(self):
        return max(0, len(self.batch_sampler) - self.skip)


def epoch_loader(loader, epoch: int, skip: int, seed: int, rank: int):
    """A DataLoader over ``loader``'s dataset and batches for ``epoch``, from batch ``skip`` on.

    Rebuilt each epoch with its own generator, so the shuffle order and the
    worker seeds depend only on (seed, epoch, rank), never on how much of the
    global RNG earlier code consumed: a resumed run sees the same batches.
    """
    from torch.utils.data import DataLoader

    set_epoch(loader, epoch)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch * 7919 + rank)
    kwargs = dict(num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                  worker_init_fn=loader.worker_init_fn, generator=gen)
    if loader.num_workers > 0:
        kwargs.update(multiprocessing_context=loader.multiprocessing_context, prefetch_factor=loader.prefetch_factor)
    return DataLoader(loader.dataset, batch_sampler=_SkipBatchSampler(loader.batch_sampler, skip), **kwargs)


def build_model(cfg: RunConfig, log: logging.Logger) -> nn.Module:
    """The model ``cfg.model`` describes: pretrained weights, or a fresh ``arch``."""
    m = cfg.model
    overrides = dict(m.overrides)
    overrides.setdefault("drop_path", float(m.drop_path))
    if m.pretrained:
        log.info(f"loading weights from {m.pretrained}")
        model = load_pretrained(m.pretrained, num_frames=m.num_frames)
        if overrides:
            log.info(f"note: model.overrides {overrides} are ignored when loading pretrained weights, "
                     "except drop_path where the model supports setting it")
        return model
    return create_model(m.arch, num_frames=m.num_frames, **overrides)


def run_preprocessing(cfg: RunConfig) -> dict | None:
    """What a checkpoint of this run records about its inputs (see :mod:`xclip.model.preprocessing`)."""
    from xclip.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from xclip.model.preprocessing import from_train_config

    return from_train_config(cfg.to_dict(), default_mean=list(IMAGENET_MEAN), default_std=list(IMAGENET_STD))


def class_tokens(cfg: RunConfig) -> tuple[list[str], torch.Tensor]:
    """The class names of ``data.labels`` and their prompt tokens (``data.text_template``)."""
    names = read_labels(cfg.data.labels)
    nc = cfg.data.num_classes
    if nc is not None and nc != len(names):
        raise ValueError(f"data.num_classes={nc} but the labels {cfg.data.labels!r} list {len(names)} classes")
    return names, tokenize([cfg.data.text_template.format(n) for n in names])


def _dataset(cfg: "RunConfig | Mapping", list_file, mode: str, num_clips: int = 1, num_crops: int = 1, frame_cache=None):
    """The run's dataset for ``list_file`` (see :func:`xclip.data.build_dataset`)."""
    cfg = to_config(cfg)
    return build_dataset(cfg.data, list_file, mode=mode, num_frames=cfg.model.num_frames, num_clips=num_clips,
                         num_crops=num_crops, seed=cfg.seed, frame_cache=frame_cache)


class Trainer:
    """One training job. Call :meth:`fit`, or the parts in its order (see the module docstring)."""

    def __init__(self, cfg: "RunConfig | Mapping", *, model: nn.Module | None = None,
                 on_step: Callable[[dict], None] | None = None, frame_cache=None,
                 dist_info: DistInfo | None = None, log: logging.Logger | None = None):
        self.cfg = to_config(cfg)
        self.dist = dist_info or DistInfo()
        self.log = log or setup_logger(None, self.dist.is_main)
        self.model = model
        self.on_step = on_step
        self.frame_cache = frame_cache
        self.device = self.dist.device
        self.global_step, self.start_epoch, self.skip_batches, self.best_metric = 0, 0, 0, -1.0
        self.metrics: Metrics | None = None
        self.fwd: nn.Module | None = None
        self._text_features = None
        self._acc_loss, self._acc_n = 0.0, 0
        self._t_step = time.time()
        self.summary: dict[str, Any] = {"output": self.cfg.output, "world_size": self.dist.world_size,
                                        "skipped_videos": 0, "skipped_paths": [], "val": [], "stopped_early": False}

    # ------------------------------------------------------------------ setup
    def setup(self) -> "Trainer":
        """Everything before the first step: runtime settings, model, data, optimiser; then wrap for DDP."""
        self._setup_runtime()
        self._setup_model()
        self._setup_data()
        self._setup_optim()
        self._log_setup()
        self._wrap()
        return self

    def _setup_runtime(self) -> None:
        t = self.cfg.train
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        if self.device.type == "cpu":
            keep_freed_memory()  # the same activations are allocated every step: reuse them, no page faults
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # Same initial weights on every rank (DDP also broadcasts rank 0's), then per-rank streams.
        seed_everything(self.cfg.seed)
        os.makedirs(self.cfg.output, exist_ok=True)
        if self.dist.is_main:
            with open(os.path.join(self.cfg.output, "config.yaml"), "w") as f:
                f.write(dump_config(self.cfg))
        self.amp_dtype = amp_dtype(t.amp, self.device)

    def _setup_model(self) -> None:
        self.class_names, self.tokens = class_tokens(self.cfg)
        self.num_classes = len(self.class_names)
        model = self.model if self.model is not None else build_model(self.cfg, self.log)
        self.model = model = model.to(self.device)
        model.preprocessing = run_preprocessing(self.cfg)  # travels with save_pretrained / save_checkpoint
        if self.cfg.model.grad_checkpointing:
            model.set_grad_checkpointing(True)
        self.fix_text = self.cfg.model.fix_text
        if self.fix_text:
            if hasattr(model, "freeze_text_encoder"):
                model.freeze_text_encoder(True)
            frozen = freeze_text(model)
            self.log.info(f"text encoder frozen and cached ({len(frozen)} parameter tensors)")
        seed_everything(self.cfg.seed + self.dist.rank)

    def _loader(self, list_file, train: bool, clips: int = 1, crops: int = 1):
        cfg = self.cfg
        ds = build_dataset(cfg.data, list_file, mode="train" if train else "test", num_frames=cfg.model.num_frames,
                           num_clips=clips, num_crops=crops, seed=cfg.seed, frame_cache=self.frame_cache)
        bs = cfg.train.batch_size if train else (cfg.eval.batch_size or cfg.train.batch_size)
        return build_data_loader(cfg.data, ds, bs, train=train, distributed=self.dist.distributed, seed=cfg.seed)

    def _setup_data(self) -> None:
        cfg, t, d = self.cfg, self.cfg.train, self.cfg.data
        if self.frame_cache is None and d.cache_frames:
            from xclip.data import FrameCache

            self.frame_cache = FrameCache(d.decoder)
        self.check_lists()
        self.train_loader = self._loader(d.train_list, train=True)
        self.val_loader = self._loader(d.val_list, train=False) if d.val_list and t.eval_every > 0 else None
        if self.frame_cache is not None:  # decode up front (workers forked later share the frames)
            paths = [p for p, _ in self.train_loader.dataset.samples]
            paths += [p for p, _ in self.val_loader.dataset.samples] if self.val_loader else []
            t_fill = time.time()
            failed = self.frame_cache.fill(paths, progress=self.dist.is_main and cfg.log.progress)
            self.log.info(f"frame cache: {len(self.frame_cache)} videos decoded and held in memory "
                          f"({self.frame_cache.nbytes / 2**20:.1f} MiB, {time.time() - t_fill:.1f} s)"
                          + (f"; {len(failed)} could not be decoded (skipped when drawn)" if failed else ""))
        ds = self.train_loader.dataset
        if len(ds) == 0 and getattr(ds, "missing", None):
            raise ValueError(f"none of the {len(ds.missing)} videos of data.train_list {d.train_list} exist under "
                             f"data.root {d.root!r} (first: {ds.missing[0]})")
        self.micro_per_epoch = len(self.train_loader)
        self.steps_per_epoch = self.micro_per_epoch // t.accumulation_steps
        if self.steps_per_epoch < 1:
            raise ValueError(f"an epoch has {self.micro_per_epoch} batch(es) per process but train.accumulation_steps="
                             f"{t.accumulation_steps}: lower train.batch_size ({t.batch_size}) or "
                             f"train.accumulation_steps, or add training videos "
                             f"({len(self.train_loader.dataset)} in {d.train_list})")

    def check_lists(self) -> None:
        """Every label id of the train, val and test lists names a class of ``data.labels``, before the first step."""
        d = self.cfg.data
        for key in ("train_list", "val_list", "test_list"):
            source = getattr(d, key)
            if source:
                check_list_labels(source, self.num_classes, labels=f"data.labels ({d.labels!r})", what=f"data.{key}")

    def _setup_optim(self) -> None:
        t = self.cfg.train
        self.total_steps = t.epochs * self.steps_per_epoch
        self.warmup_steps = min(self.total_steps, int(round(t.warmup_epochs * self.steps_per_epoch)))
        self.optimizer = build_optimizer(self.model, t)
        self.text_freeze_steps = int(round(t.text_freeze_epochs * self.steps_per_epoch))
        hold = {}
        if self.text_freeze_steps > 0:
            hold = {g["name"]: self.text_freeze_steps for g in self.optimizer.param_groups
                    if g["name"].startswith("text_")}
        self.hold = hold
        self.schedule = CosineWarmupSchedule(self.optimizer, total_steps=self.total_steps,
                                             warmup_steps=self.warmup_steps, min_lr_ratio=t.min_lr_ratio,
                                             warmup_init_lr=t.warmup_init_lr, hold=hold)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=(self.amp_dtype == torch.float16))
        self.mixer = None
        if t.mixup > 0 or t.cutmix > 0:
            self.mixer = MixupCutmix(self.num_classes, mixup_alpha=t.mixup, cutmix_alpha=t.cutmix,
                                     switch_prob=t.mixup_switch_prob, smoothing=t.label_smoothing,
                                     generator=torch.Generator().manual_seed(self.cfg.seed * 31 + self.dist.rank))

    def _log_setup(self) -> None:
        t, log, world = self.cfg.train, self.log, self.dist.world_size
        bs, accum, mpe = t.batch_size, t.accumulation_steps, self.micro_per_epoch
        self.summary["effective_batch"] = bs * accum * world
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.model.parameters())
        log.info(f"world size {world} ({self.dist.backend or 'single process'}) on {self.device}; amp={self.amp_dtype}")
        log.info(f"effective batch = {bs} per process x {accum} accumulation x {world} process(es) = "
                 f"{bs * accum * world} clips per step")
        log.info(f"{len(self.train_loader.dataset)} training videos, {mpe} batches per process per epoch, "
                 f"{self.steps_per_epoch} steps per epoch, {self.total_steps} steps in {t.epochs} epochs "
                 f"({self.warmup_steps} warm-up)")
        if mpe % accum:
            log.info(f"note: the last {mpe % accum} batch(es) of each epoch do not fill an accumulation step and are not used")
        log.info(f"parameters: {n_train:,} trainable of {n_all:,}")
        if self.hold:
            log.info(f"text tower held still (lr 0) for the first {self.text_freeze_steps} steps "
                     f"({t.text_freeze_epochs} epochs), then warmed up over {max(self.warmup_steps, 1)} steps")
        for g in self.optimizer.param_groups:
            log.info(f"  group {g['name']}: {len(g['params'])} tensors, lr {g['base_lr']:.3g}, "
                     f"weight decay {g['weight_decay']}")

    def _wrap(self) -> None:
        self.fwd = TrainForward(self.model)
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.fwd = DDP(self.fwd, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                           find_unused_parameters=self.cfg.train.find_unused_parameters)
        self.tokens = trim_tokens(self.tokens, self.model).to(self.device)
        self._text_features = None

    def text_input(self) -> tuple[torch.Tensor, bool]:
        """Token ids (text tower training) or the cached class-text features (frozen text tower)."""
        if not self.fix_text:
            return self.tokens, False
        if self._text_features is None:
            with torch.no_grad(), autocast(self.device, self.amp_dtype):
                self._text_features = self.model.encode_text(self.tokens).float()
        return self._text_features, True

    # ------------------------------------------------------------------ resume
    def resume(self, resume: str | None = None) -> bool:
        """Restore model, optimiser, schedule, scaler, counters and RNG from a checkpoint.

        ``resume`` (default ``train.resume``): ``"auto"`` (the newest valid
        checkpoint in the output folder; none is fine) or a path. Returns
        whether a checkpoint was loaded.
        """
        resume = self.cfg.train.resume if resume is None else resume
        if self.dist.is_main:  # a run killed mid-write left these; nothing renames them any more
            ckpt_lib.remove_stale_temporaries(self.cfg.output, log=self.log.info)
        found = None
        if resume == "auto":
            found = ckpt_lib.find_latest_valid(self.cfg.output, log=self.log.info)
            if found is None:
                self.log.info(f"resume=auto: no valid checkpoint in {self.cfg.output}, starting fresh")
        elif resume:
            found = (resume, ckpt_lib.load_checkpoint(resume))
        if found is None:
            return False
        path, state = found
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        if missing or unexpected:
            raise ValueError(f"checkpoint {path} does not match the model: missing {list(missing)[:5]}, "
                             f"unexpected {list(unexpected)[:5]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.global_step = int(state["step"])
        self.best_metric = float(state.get("best_metric", -1.0))
        if state.get("epoch_complete", True):
            self.start_epoch, self.skip_batches = int(state["epoch"]) + 1, 0
        else:
            self.start_epoch, self.skip_batches = int(state["epoch"]), int(state["batch_in_epoch"])
        self._restore_rng(state.get("rng") or [])
        self._text_features = None
        self.log.info(f"resumed from {path}: epoch {self.start_epoch}, step {self.global_step}, skipping "
                      f"{self.skip_batches} batch(es) of this epoch")
        return True

    def _restore_rng(self, rngs: list) -> None:
        if len(rngs) == self.dist.world_size:
            mine = rngs[self.dist.rank]
            ckpt_lib.set_rng_state(mine["global"])
            if self.mixer is not None and mine.get("mixup"):
                self.mixer.load_state_dict(mine["mixup"])
        else:
            self.log.info(f"checkpoint has RNG states for {len(rngs)} process(es), this run has "
                          f"{self.dist.world_size}: reseeding")
            seed_everything(self.cfg.seed + self.dist.rank + 1000 * self.global_step)

    # ------------------------------------------------------------------ save
    def _gather_rng(self) -> list[dict]:
        state = {"global": ckpt_lib.get_rng_state(), "mixup": self.mixer.state_dict() if self.mixer is not None else None}
        if not self.dist.distributed:
            return [state]
        import torch.distributed as dist

        out: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(out, state)
        return out

    def state_dict(self, epoch: int, batch_in_epoch: int, epoch_complete: bool) -> dict:
        """The checkpoint's contents (``rng`` filled by :meth:`save`)."""
        model = self.model
        return {
            "model": model.state_dict(),
            "config": model.config.to_dict() if hasattr(model, "config") and hasattr(model.config, "to_dict") else None,
            "train_config": self.cfg.to_dict(),
            "preprocessing": run_preprocessing(self.cfg),
            "class_names": self.class_names,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": epoch,
            "step": self.global_step,
            "batch_in_epoch": batch_in_epoch,
            "epoch_complete": epoch_complete,
            "best_metric": self.best_metric,
            "world_size": self.dist.world_size,
        }

    def save(self, epoch: int, batch_in_epoch: int, epoch_complete: bool, is_best: bool = False) -> str | None:
        """Write a checkpoint atomically (rank 0) and prune old ones; every rank must call it. Returns its path."""
        rngs = self._gather_rng()  # collective: every rank calls
        if not self.dist.is_main:
            return None
        t, output = self.cfg.train, self.cfg.output
        state = dict(self.state_dict(epoch, batch_in_epoch, epoch_complete), rng=rngs)
        name = ckpt_lib.checkpoint_name(self.global_step, epoch if epoch_complete else None)
        path = os.path.join(output, name)
        ckpt_lib.atomic_save(state, path)
        if not epoch_complete:
            ckpt_lib.prune_step_checkpoints(output, t.keep_step_checkpoints)
        elif t.keep_epoch_checkpoints:
            ckpt_lib.prune_epoch_checkpoints(output, t.keep_epoch_checkpoints)
        if is_best:
            ckpt_lib.atomic_save(state, os.path.join(output, "best.pth"))
        self.log.info(f"saved {name}{' and best.pth' if is_best else ''}")
        return path

    # ------------------------------------------------------------------ steps
    def _batch_size_everywhere(self, n_local: int) -> int:
        """The smallest batch over the ranks: every rank must agree to skip an empty batch, else DDP would hang."""
        if not self.dist.distributed:
            return n_local
        import torch.distributed as dist

        n_min = torch.tensor([-n_local], dtype=torch.int64, device=self.device)
        dist.all_reduce(n_min, op=dist.ReduceOp.MAX)
        return -int(n_min.item())

    def micro_step(self, batch: dict, sync: bool = True) -> int:
        """Forward and backward of one micro-batch (gradients accumulate); returns its local clip count."""
        video, labels = batch["video"], batch["label"]
        n_local = int(video.shape[0]) if video.ndim >= 1 else 0
        if self._batch_size_everywhere(n_local) == 0:
            return 0
        if video.ndim == 6:
            video = video[:, 0]  # [B, V=1, T, 3, H, W] -> one training view
        video = video.to(self.device, non_blocking=True).float()
        labels = labels.to(self.device, non_blocking=True).long()
        target = None
        if self.mixer is not None:
            video, target = self.mixer(video, labels)
        text, is_feat = self.text_input()
        no_sync = self.dist.distributed and not sync
        with self.fwd.no_sync() if no_sync else contextlib.nullcontext():
            with autocast(self.device, self.amp_dtype):
                logits = self.fwd(video, text, is_feat)
            logits = logits.float()
            if target is not None:
                loss = soft_target_cross_entropy(logits, target)
            else:
                loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.train.label_smoothing)
            self.scaler.scale(loss / self.cfg.train.accumulation_steps).backward()
        self._acc_loss += float(loss.detach()) * n_local
        self._acc_n += n_local
        return n_local

    def optimizer_step(self, epoch: int = 0) -> dict | None:
        """Step the optimiser on the accumulated gradients; the record logged, or None for an all-empty step.

        Raises :class:`NonFiniteLossError` when the mean loss over all ranks is not finite.
        """
        stats = all_reduce_sum(torch.tensor([self._acc_loss, float(self._acc_n),
                                             0.0 if math.isfinite(self._acc_loss) else 1.0],
                                            dtype=torch.float64, device=self.device))
        mean_loss = float(stats[0] / max(stats[1], 1.0))
        if stats[2] > 0 or not math.isfinite(mean_loss):
            raise NonFiniteLossError(self.global_step + 1, epoch, mean_loss)
        empty = self._acc_n == 0 and stats[1] == 0
        self._acc_loss, self._acc_n = 0.0, 0
        if empty:
            self.optimizer.zero_grad(set_to_none=True)
            return None
        grad_norm = None
        if self.cfg.train.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad))
        lr_now = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.global_step += 1
        dt = time.time() - self._t_step
        self._t_step = time.time()
        rec = {"loss": mean_loss, "lr": lr_now, "throughput": stats[1].item() / max(dt, 1e-9),
               "clips": int(stats[1])}
        if grad_norm is not None:
            rec["grad_norm"] = grad_norm
        return rec

    def step(self, batch: dict, epoch: int = 0) -> dict | None:
        """One optimiser step on one batch (no accumulation): :meth:`micro_step` then :meth:`optimizer_step`."""
        self.model.train()
        self.micro_step(batch)
        return self.optimizer_step(epoch)

    # ------------------------------------------------------------------ epochs
    def _progress_bar(self, epoch: int, skip: int):
        if not (self.dist.is_main and self.cfg.log.progress):
            return None
        from tqdm import tqdm

        return tqdm(total=self.micro_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
                    dynamic_ncols=True, leave=False, file=sys.stdout, mininterval=0.5)

    def _note_skipped(self, batch: dict, epoch: int) -> None:
        if batch.get("skipped"):
            self.summary["skipped_videos"] += int(batch["skipped"])
            self.summary["skipped_paths"] += list(batch.get("skipped_paths") or [])
            self.log.info(f"skipped {batch['skipped']} unreadable video(s) in epoch {epoch}: {batch.get('skipped_paths')}")

    def run_epoch(self, epoch: int) -> bool:
        """Train one epoch (from ``skip_batches`` on, for the resumed one). Returns True when ``max_steps`` stopped it."""
        t = self.cfg.train
        accum = t.accumulation_steps
        self.model.train()
        skip = self.skip_batches if epoch == self.start_epoch else 0
        loader = epoch_loader(self.train_loader, epoch, skip, self.cfg.seed, self.dist.rank)
        bar = self._progress_bar(epoch, skip)
        self.optimizer.zero_grad(set_to_none=True)
        self._acc_loss, self._acc_n = 0.0, 0
        self._t_step = time.time()
        try:
            for i, batch in enumerate(loader, start=skip):
                if i >= self.steps_per_epoch * accum:
                    break  # leftover batches that cannot fill an accumulation step
                self._note_skipped(batch, epoch)
                last_micro = (i + 1) % accum == 0
                self.micro_step(batch, sync=last_micro)
                if bar is not None:
                    bar.update(1)
                if not last_micro:
                    continue
                rec = self._optimizer_step_logged(epoch, i, bar)
                if rec is not None and self._after_step(epoch, i):
                    return True
        finally:
            if bar is not None:
                bar.close()
        return False

    def _optimizer_step_logged(self, epoch: int, i: int, bar) -> dict | None:
        try:
            rec = self.optimizer_step(epoch)
        except NonFiniteLossError as err:
            self.log.error(str(err))
            if self.metrics is not None:
                self.metrics.close()
            raise
        if rec is None:
            return None
        clips = rec.pop("clips")
        self.summary["clips_seen"] = self.summary.get("clips_seen", 0) + clips
        self.summary["final_loss"] = rec["loss"]
        rec["epoch"] = epoch + (i + 1) / self.micro_per_epoch
        if bar is not None:
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", clips_s=f"{rec['throughput']:.1f}",
                            step=self.global_step)
        if self.metrics is not None:
            self.metrics.write("train", self.global_step, **rec)
        if self.on_step is not None:
            self.on_step({"step": self.global_step, "epoch": epoch, **rec})
        self._log_progress(epoch, rec, bar)
        return rec

    def _log_progress(self, epoch: int, rec: dict, bar) -> None:
        t, gs = self.cfg.train, self.global_step
        if gs % max(1, self.cfg.log.print_every) and gs != 1:
            return
        elapsed = time.time() - self._t_start
        done = gs - (self.start_epoch * self.steps_per_epoch + self.skip_batches // t.accumulation_steps)
        remaining = (min(self.total_steps, t.max_steps or self.total_steps) - gs) * elapsed / max(done, 1)
        msg = (f"epoch {epoch + 1}/{t.epochs} step {gs}/{self.total_steps} loss {rec['loss']:.4f} lr {rec['lr']:.3e} "
               f"{rec['throughput']:.1f} clips/s eta {fmt_time(remaining)}")
        (self.log.info if bar is None else file_only(self.log))(msg)

    def _after_step(self, epoch: int, i: int) -> bool:
        """Delay, mid-epoch checkpoint, ``max_steps``: True when the run stops here mid-epoch."""
        t = self.cfg.train
        if t.debug_step_delay > 0:
            time.sleep(t.debug_step_delay)
        at_epoch_end = (i + 1) == self.steps_per_epoch * t.accumulation_steps
        if t.save_every_steps and self.global_step % t.save_every_steps == 0 and not at_epoch_end:
            self.save(epoch, i + 1, epoch_complete=False)
        _test_kill_at_step(self.global_step)
        if t.max_steps is not None and self.global_step >= t.max_steps:
            self._stop = True
            self.summary["stopped_early"] = not at_epoch_end or epoch + 1 < t.epochs
            if not at_epoch_end:
                self.save(epoch, i + 1, epoch_complete=False)
                return True
        return False

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, loader) -> dict:
        """Evaluate the model on ``loader`` against the class prompts (all ranks)."""
        text, _ = self.text_input()
        return evaluate(self.model, loader, text, device=self.device, amp_dtype=self.amp_dtype,
                        num_classes=self.num_classes, progress=self.cfg.log.progress)

    def _end_epoch(self, epoch: int) -> None:
        """Validate (every ``train.eval_every`` epochs and at the last) and write the epoch checkpoint."""
        t = self.cfg.train
        val = None
        if self.val_loader is not None and ((epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs):
            res = self.evaluate(self.val_loader)
            val = {k: res[k] for k in ("top1", "top5", "mean_class_acc", "num_samples", "skipped") if k in res}
            self.summary["val"].append({"epoch": epoch, "step": self.global_step, **val})
            self.metrics.write("val", self.global_step, epoch=epoch + 1, **val)
            self.log.info(f"epoch {epoch + 1}/{t.epochs}: val top1 {val['top1']:.2f}% top5 "
                          f"{val.get('top5', float('nan')):.2f}% ({val.get('num_samples')} videos) train loss "
                          f"{self.summary.get('final_loss', float('nan')):.4f}")
            self.model.train()
        is_best = val is not None and val["top1"] > self.best_metric
        if is_best:
            self.best_metric = float(val["top1"])
        self.save(epoch, self.micro_per_epoch, epoch_complete=True, is_best=is_best)
        barrier()

    def final_test(self) -> dict | None:
        """The multi-view test (``eval.num_clips`` x ``eval.num_crops``) on ``data.test_list`` (else ``val_list``)."""
        d, e = self.cfg.data, self.cfg.eval
        test_list = d.test_list or d.val_list
        if not (self.cfg.train.final_test and test_list and not self.summary["stopped_early"]):
            return None
        loader = self._loader(test_list, train=False, clips=e.num_clips, crops=e.num_crops)
        self.model.eval()
        res = self.evaluate(loader)
        self.summary["test_result"] = res
        test = {k: res[k] for k in ("top1", "top5", "mean_class_acc", "num_samples", "skipped") if k in res}
        self.summary["test"] = dict(test, views=f"{e.num_clips}x{e.num_crops}")
        self.metrics.write("test", self.global_step, **test)
        self.log.info(f"test ({e.num_clips} clips x {e.num_crops} crops): top1 {res['top1']:.2f}% top5 "
                      f"{res.get('top5', float('nan')):.2f}% ({res.get('num_samples')} videos)")
        return res

    # ------------------------------------------------------------------ the whole run
    def fit(self) -> dict:
        """setup, resume, epochs, final test; returns the summary (also written to ``output/summary.json``)."""
        if self.fwd is None:
            self.setup()
            self.resume()
        cfg, s = self.cfg, self.summary
        self.metrics = Metrics(cfg.output, self.dist.is_main, cfg.log.tensorboard, self.log)
        self._t_start, self._stop = time.time(), False
        s.setdefault("final_loss", float("nan"))
        s.setdefault("clips_seen", 0)
        for epoch in range(self.start_epoch, cfg.train.epochs):
            if self._stop:
                break
            if self.run_epoch(epoch):
                break
            self._end_epoch(epoch)
        train_time = time.time() - self._t_start
        s.update({"steps": self.global_step, "train_time_s": train_time, "best_val_top1": self.best_metric})
        self.log.info(f"training done: {self.global_step} steps in {fmt_time(train_time)}; "
                      f"{s['skipped_videos']} unreadable video(s) skipped")
        self.final_test()
        self.metrics.close()
        if self.dist.is_main:
            with open(os.path.join(cfg.output, "summary.json"), "w") as f:
                json.dump({k: v for k, v in s.items() if k != "test_result"}, f, indent=2, default=str)
        s.update(model=self.model, class_names=self.class_names, frame_cache=self.frame_cache)
        return s


def train(cfg: "RunConfig | Mapping", *, model: nn.Module | None = None,
          on_step: Callable[[dict], None] | None = None, frame_cache=None) -> dict:
    """Run a training job. ``model`` (optional) replaces the one the config describes.

    ``cfg`` is a :class:`xclip.config.RunConfig` or a (possibly partial) dict
    merged over the defaults. ``frame_cache`` (a :class:`xclip.data.FrameCache`,
    optional) serves decoded frames to every data set of the run; with
    ``data.cache_frames: true`` and none given, the run makes its own. The
    summary returns the one used.
    """
    cfg = to_config(cfg)
    dist_info = init_distributed(cfg.train.device)
    try:
        if dist_info.is_main:
            os.makedirs(cfg.output, exist_ok=True)
        barrier()
        log = setup_logger(cfg.output, dist_info.is_main)
        return Trainer(cfg, model=model, on_step=on_step, frame_cache=frame_cache, dist_info=dist_info, log=log).fit()
    finally:
        cleanup()
