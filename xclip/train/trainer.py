"""The training loop: one process or many under torchrun.

``train(cfg)`` runs a whole job from a config dict (see :mod:`xclip.train.config`):
builds the model, data, optimiser, schedule and scaler, resumes if asked,
trains epoch by epoch with gradient accumulation (``DDP.no_sync`` on the
micro-steps that do not step), evaluates single-view after each epoch,
checkpoints atomically and finishes with a multi-view test. It returns a
summary dict (final metrics, paths, counts).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt_lib
from .config import DEFAULTS, dump_config, merge, validate
from .distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from .mixup import MixupCutmix, soft_target_cross_entropy
from .optim import build_optimizer, freeze_text
from .schedule import CosineWarmupSchedule

__all__ = ["train", "NonFiniteLossError", "TrainForward", "amp_dtype_from_config", "setup_logger", "trim_tokens"]

LOGGER_NAME = "xclip.train"


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


class _TqdmHandler(logging.StreamHandler):
    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # pragma: no cover
            self.handleError(record)


def setup_logger(output: str | None, is_main: bool, name: str = LOGGER_NAME) -> logging.Logger:
    """Console (through tqdm) + ``output/log.txt`` on rank 0; errors only elsewhere."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    if is_main:
        console = _TqdmHandler()
        console.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        logger.addHandler(console)
        if output:
            os.makedirs(output, exist_ok=True)
            fh = logging.FileHandler(os.path.join(output, "log.txt"))
            fh.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
            logger.addHandler(fh)
    else:
        h = logging.StreamHandler(sys.stderr)
        h.setLevel(logging.ERROR)
        logger.addHandler(h)
    return logger


def amp_dtype_from_config(amp: Any, device: torch.device) -> torch.dtype | None:
    a = str(amp).lower()
    if a in ("none", "false", "fp32", "float32"):
        return None
    if a in ("bf16", "bfloat16"):
        return torch.bfloat16
    if a in ("fp16", "float16"):
        if device.type != "cuda":
            raise ValueError("train.amp=fp16 needs a CUDA device (use bf16 or none on the CPU)")
        return torch.float16
    raise ValueError(f"train.amp must be bf16, fp16 or none, got {amp!r}")


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


def _seed_everything(seed: int) -> None:
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


def _epoch_loader(loader, epoch: int, skip: int, seed: int, rank: int):
    """A DataLoader over ``loader``'s dataset and batches for ``epoch``, from batch ``skip`` on.

    Rebuilt each epoch with its own generator, so the shuffle order and the
    worker seeds depend only on (seed, epoch, rank), never on how much of the
    global RNG earlier code consumed: a resumed run sees the same batches.
    """
    from torch.utils.data import DataLoader

    from xclip.data import set_epoch

    set_epoch(loader, epoch)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch * 7919 + rank)
    kwargs = dict(num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                  worker_init_fn=loader.worker_init_fn, generator=gen)
    if loader.num_workers > 0:
        kwargs.update(multiprocessing_context=loader.multiprocessing_context, prefetch_factor=loader.prefetch_factor)
    return DataLoader(loader.dataset, batch_sampler=_SkipBatchSampler(loader.batch_sampler, skip), **kwargs)


def _build_model(cfg: dict, log: logging.Logger) -> nn.Module:
    import xclip

    m = cfg["model"]
    overrides = dict(m.get("overrides") or {})
    if m.get("drop_path") is not None:
        overrides.setdefault("drop_path", float(m["drop_path"]))
    if m.get("pretrained"):
        log.info(f"loading weights from {m['pretrained']}")
        model = xclip.load_pretrained(m["pretrained"], num_frames=int(m["num_frames"]))
        if overrides:
            log.info(f"note: model.overrides {overrides} are ignored when loading pretrained weights, "
                     "except drop_path where the model supports setting it")
    else:
        model = xclip.create_model(m["arch"], num_frames=int(m["num_frames"]), **overrides)
    return model


def _class_tokens(cfg: dict) -> tuple[list[str], torch.Tensor]:
    import xclip
    from xclip.data import read_labels

    names = read_labels(cfg["data"]["labels"])
    nc = cfg["data"].get("num_classes")
    if nc is not None and int(nc) != len(names):
        raise ValueError(f"data.num_classes={nc} but the labels {cfg['data']['labels']!r} list {len(names)} classes")
    template = cfg["data"].get("text_template", "{}")
    return names, xclip.tokenize([template.format(n) for n in names])


def _dataset(cfg: dict, list_file: str, mode: str, num_clips: int = 1, num_crops: int = 1, frame_cache=None):
    from xclip.data import VideoDataset

    d = cfg["data"]
    kwargs: dict[str, Any] = dict(num_frames=int(cfg["model"]["num_frames"]), mode=mode, input_size=int(d["input_size"]),
                                  num_clips=num_clips, num_crops=num_crops, seed=int(cfg["seed"]))
    for key in ("sampling", "decoder", "mean", "std", "crop_pct"):
        if d.get(key) is not None:
            kwargs[key] = d[key] if key not in ("mean", "std") else tuple(d[key])
    ds = VideoDataset(list_file, d["root"], **kwargs)
    aug = d.get("augment")
    if mode == "train" and aug:
        from xclip.data import train_transform

        if not isinstance(aug, dict):
            raise ValueError(f"data.augment must be a mapping of train_transform options, got {aug!r}")
        opts = {k: (tuple(v) if isinstance(v, list) else v) for k, v in aug.items()}
        try:
            ds.transform = train_transform(ds.input_size, ds.mean, ds.std, **{"crop_pct": ds.crop_pct, **opts})
        except TypeError as e:
            raise ValueError(f"data.augment: {e}") from None
    if frame_cache is not None:
        from .frame_cache import cached_dataset

        ds = cached_dataset(ds, frame_cache)
    return ds


class _Metrics:
    """metrics.jsonl (machine-readable history) + TensorBoard scalars, rank 0 only."""

    def __init__(self, output: str, enabled: bool, tensorboard: bool, log: logging.Logger):
        self.enabled = enabled
        self.file = None
        self.tb = None
        if not enabled:
            return
        self.file = open(os.path.join(output, "metrics.jsonl"), "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(output, "tb"))
            except Exception as e:  # tensorboard missing or broken: keep training
                log.info(f"TensorBoard disabled: {type(e).__name__}: {e}")

    def write(self, kind: str, step: int, **values) -> None:
        if not self.enabled:
            return
        rec = {"kind": kind, "step": int(step), **{k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in values.items()}}
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def _gather_rng(dist_info: DistInfo, mixer: MixupCutmix | None) -> list[dict]:
    state = {"global": ckpt_lib.get_rng_state(), "mixup": mixer.state_dict() if mixer is not None else None}
    if not dist_info.distributed:
        return [state]
    import torch.distributed as dist

    out: list[Any] = [None] * dist_info.world_size
    dist.all_gather_object(out, state)
    return out


def _evaluate(model, loader, text, cfg, dist_info, amp_dtype, num_classes):
    from xclip.eval import evaluate

    return evaluate(model, loader, text, device=dist_info.device, amp_dtype=amp_dtype, num_classes=num_classes,
                    progress=bool(cfg["log"].get("progress", True)))


def train(cfg: dict, *, model: nn.Module | None = None, on_step: Callable[[dict], None] | None = None,
          frame_cache=None) -> dict:
    """Run a training job. ``model`` (optional) replaces the one the config describes.

    ``cfg`` may be partial: it is merged over :data:`xclip.train.config.DEFAULTS`.
    ``frame_cache`` (a :class:`xclip.train.frame_cache.FrameCache`, optional) serves
    decoded frames to every data set of the run; with ``data.cache_frames: true``
    and none given, the run makes its own. The summary returns the one used.
    """
    cfg = validate(merge(DEFAULTS, cfg))
    t_cfg, d_cfg = cfg["train"], cfg["data"]
    dist_info = init_distributed(t_cfg.get("device", "auto"))
    output = cfg["output"]
    try:
        if dist_info.is_main:
            os.makedirs(output, exist_ok=True)
        barrier()
        log = setup_logger(output, dist_info.is_main)
        return _train(cfg, dist_info, log, model, on_step, frame_cache)
    finally:
        cleanup()


def _train(cfg, dist_info: DistInfo, log: logging.Logger, model, on_step, frame_cache=None) -> dict:
    t_cfg, d_cfg = cfg["train"], cfg["data"]
    output = cfg["output"]
    device = dist_info.device
    seed = int(cfg["seed"])
    world = dist_info.world_size
    if t_cfg.get("num_threads"):
        torch.set_num_threads(int(t_cfg["num_threads"]))
    if t_cfg.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Same initial weights on every rank (DDP also broadcasts rank 0's), then per-rank streams.
    _seed_everything(seed)
    if dist_info.is_main:
        with open(os.path.join(output, "config.yaml"), "w") as f:
            f.write(dump_config(cfg))
    amp_dtype = amp_dtype_from_config(t_cfg.get("amp", "none"), device)

    class_names, tokens = _class_tokens(cfg)
    num_classes = len(class_names)
    if model is None:
        model = _build_model(cfg, log)
    model = model.to(device)
    if cfg["model"].get("grad_checkpointing"):
        model.set_grad_checkpointing(True)
    fix_text = bool(cfg["model"].get("fix_text", True))
    if fix_text:
        if hasattr(model, "freeze_text_encoder"):
            model.freeze_text_encoder(True)
        frozen = freeze_text(model)
        log.info(f"text encoder frozen and cached ({len(frozen)} parameter tensors)")
    _seed_everything(seed + dist_info.rank)

    from xclip.data import build_loader

    bs = int(t_cfg["batch_size"])
    accum = int(t_cfg["accumulation_steps"])
    workers = int(d_cfg.get("num_workers", 0))
    if frame_cache is None and d_cfg.get("cache_frames"):
        from .frame_cache import FrameCache

        frame_cache = FrameCache(d_cfg.get("decoder", "auto"))
    train_ds = _dataset(cfg, d_cfg["train_list"], "train", frame_cache=frame_cache)
    train_loader = build_loader(train_ds, bs, train=True, num_workers=workers,
                                distributed=dist_info.distributed, seed=seed, drop_last=True)
    val_loader = None
    if d_cfg.get("val_list") and int(t_cfg.get("eval_every", 1)) > 0:
        val_ds = _dataset(cfg, d_cfg["val_list"], "test", 1, 1, frame_cache=frame_cache)
        val_loader = build_loader(val_ds, int(cfg["test"].get("batch_size") or bs), train=False, num_workers=workers,
                                  distributed=dist_info.distributed, seed=seed)
    if frame_cache is not None:  # decode up front (workers forked later share the frames)
        paths = [p for p, _ in train_ds.samples] + ([p for p, _ in val_loader.dataset.samples] if val_loader else [])
        t_fill = time.time()
        failed = frame_cache.fill(paths, progress=dist_info.is_main and bool(cfg["log"].get("progress", True)))
        log.info(f"frame cache: {len(frame_cache)} videos decoded and held in memory "
                 f"({frame_cache.nbytes / 2**20:.1f} MiB, {time.time() - t_fill:.1f} s)"
                 + (f"; {len(failed)} could not be decoded (skipped when drawn)" if failed else ""))
    micro_per_epoch = len(train_loader)
    steps_per_epoch = micro_per_epoch // accum
    if steps_per_epoch < 1:
        raise ValueError(f"an epoch has {micro_per_epoch} batch(es) per process but train.accumulation_steps={accum}: "
                         f"lower train.batch_size ({bs}) or train.accumulation_steps, or add training videos "
                         f"({len(train_ds)} in {d_cfg['train_list']})")
    epochs = int(t_cfg["epochs"])
    total_steps = epochs * steps_per_epoch
    max_steps = t_cfg.get("max_steps")
    warmup_steps = min(total_steps, int(round(float(t_cfg["warmup_epochs"]) * steps_per_epoch)))

    optimizer = build_optimizer(model, t_cfg)
    hold = {}
    text_freeze_steps = int(round(float(t_cfg.get("text_freeze_epochs") or 0) * steps_per_epoch))
    if text_freeze_steps > 0:
        hold = {g["name"]: text_freeze_steps for g in optimizer.param_groups if g["name"].startswith("text_")}
    schedule = CosineWarmupSchedule(optimizer, total_steps=total_steps, warmup_steps=warmup_steps,
                                    min_lr_ratio=float(t_cfg["min_lr_ratio"]), warmup_init_lr=float(t_cfg["warmup_init_lr"]),
                                    hold=hold)
    scaler = torch.amp.GradScaler(device.type, enabled=(amp_dtype == torch.float16))
    mixer = None
    if float(t_cfg["mixup"]) > 0 or float(t_cfg["cutmix"]) > 0:
        mixer = MixupCutmix(num_classes, mixup_alpha=float(t_cfg["mixup"]), cutmix_alpha=float(t_cfg["cutmix"]),
                            switch_prob=float(t_cfg["mixup_switch_prob"]), smoothing=float(t_cfg["label_smoothing"]),
                            generator=torch.Generator().manual_seed(seed * 31 + dist_info.rank))

    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info(f"world size {world} ({dist_info.backend or 'single process'}) on {device}; amp={amp_dtype}")
    log.info(f"effective batch = {bs} per process x {accum} accumulation x {world} process(es) = {bs * accum * world} clips per step")
    log.info(f"{len(train_ds)} training videos, {micro_per_epoch} batches per process per epoch, {steps_per_epoch} steps per epoch, "
             f"{total_steps} steps in {epochs} epochs ({warmup_steps} warm-up)")
    if micro_per_epoch % accum:
        log.info(f"note: the last {micro_per_epoch % accum} batch(es) of each epoch do not fill an accumulation step and are not used")
    log.info(f"parameters: {n_train:,} trainable of {n_all:,}")
    if hold:
        log.info(f"text tower held still (lr 0) for the first {text_freeze_steps} steps "
                 f"({t_cfg['text_freeze_epochs']} epochs), then warmed up over {max(warmup_steps, 1)} steps")
    for g in optimizer.param_groups:
        log.info(f"  group {g['name']}: {len(g['params'])} tensors, lr {g['base_lr']:.3g}, weight decay {g['weight_decay']}")

    # ---------------------------------------------------------------- resume
    start_epoch, global_step, skip_batches, best_metric = 0, 0, 0, -1.0
    resume = t_cfg.get("resume")
    found = None
    if resume == "auto":
        found = ckpt_lib.find_latest_valid(output, log=log.info)
        if found is None:
            log.info(f"resume=auto: no valid checkpoint in {output}, starting fresh")
    elif resume:
        found = (resume, ckpt_lib.load_checkpoint(resume))
    if found is not None:
        path, state = found
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        if missing or unexpected:
            raise ValueError(f"checkpoint {path} does not match the model: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        if state.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        global_step = int(state["step"])
        best_metric = float(state.get("best_metric", -1.0))
        if state.get("epoch_complete", True):
            start_epoch, skip_batches = int(state["epoch"]) + 1, 0
        else:
            start_epoch, skip_batches = int(state["epoch"]), int(state["batch_in_epoch"])
        rngs = state.get("rng") or []
        if len(rngs) == world:
            mine = rngs[dist_info.rank]
            ckpt_lib.set_rng_state(mine["global"])
            if mixer is not None and mine.get("mixup"):
                mixer.load_state_dict(mine["mixup"])
        else:
            log.info(f"checkpoint has RNG states for {len(rngs)} process(es), this run has {world}: reseeding")
            _seed_everything(seed + dist_info.rank + 1000 * global_step)
        log.info(f"resumed from {path}: epoch {start_epoch}, step {global_step}, skipping {skip_batches} batch(es) of this epoch")

    # ---------------------------------------------------------------- wrap
    fwd: nn.Module = TrainForward(model)
    if dist_info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd = DDP(fwd, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=bool(t_cfg.get("find_unused_parameters", False)))
    tokens = trim_tokens(tokens, model).to(device)
    text_features = None

    def text_input():
        nonlocal text_features
        if not fix_text:
            return tokens, False
        if text_features is None:
            with torch.no_grad(), _autocast(device, amp_dtype):
                text_features = model.encode_text(tokens).float()
        return text_features, True

    is_main = dist_info.is_main
    metrics = _Metrics(output, is_main, bool(cfg["log"].get("tensorboard", True)), log)
    save_every = int(t_cfg.get("save_every_steps") or 0)
    clip_grad = t_cfg.get("clip_grad")
    label_smoothing = float(t_cfg["label_smoothing"])
    print_every = max(1, int(cfg["log"].get("print_every", 50)))
    delay = float(t_cfg.get("debug_step_delay") or 0.0)
    summary: dict[str, Any] = {"output": output, "world_size": world, "effective_batch": bs * accum * world,
                               "skipped_videos": 0, "skipped_paths": [], "val": [], "stopped_early": False}

    def save(epoch: int, batch_in_epoch: int, epoch_complete: bool, is_best: bool = False) -> None:
        rngs = _gather_rng(dist_info, mixer)  # collective: every rank calls
        if not is_main:
            return
        state = {
            "model": model.state_dict(),
            "config": model.config.to_dict() if hasattr(model, "config") and hasattr(model.config, "to_dict") else None,
            "train_config": cfg,
            "class_names": class_names,
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "epoch": epoch,
            "step": global_step,
            "batch_in_epoch": batch_in_epoch,
            "epoch_complete": epoch_complete,
            "best_metric": best_metric,
            "world_size": world,
            "rng": rngs,
        }
        name = ckpt_lib.checkpoint_name(global_step, epoch if epoch_complete else None)
        path = os.path.join(output, name)
        ckpt_lib.atomic_save(state, path)
        if not epoch_complete:
            ckpt_lib.prune_step_checkpoints(output, int(t_cfg.get("keep_step_checkpoints", 1)))
        elif t_cfg.get("keep_epoch_checkpoints"):
            ckpt_lib.prune_epoch_checkpoints(output, int(t_cfg["keep_epoch_checkpoints"]))
        if is_best:
            ckpt_lib.atomic_save(state, os.path.join(output, "best.pth"))
        log.info(f"saved {name}{' and best.pth' if is_best else ''}")

    # ---------------------------------------------------------------- loop
    t_start = time.time()
    clips_seen = 0
    last_loss = float("nan")
    stop = False
    mid_epoch_stop = False
    for epoch in range(start_epoch, epochs):
        if stop:
            break
        model.train()
        skip = skip_batches if epoch == start_epoch else 0
        loader = _epoch_loader(train_loader, epoch, skip, seed, dist_info.rank)
        bar = None
        if is_main and cfg["log"].get("progress", True):
            from tqdm import tqdm

            bar = tqdm(total=micro_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{epochs}", dynamic_ncols=True,
                       leave=False, file=sys.stdout, mininterval=0.5)
        optimizer.zero_grad(set_to_none=True)
        acc_loss, acc_n, micro = 0.0, 0, 0
        t_step = time.time()
        step_clips = 0
        for i, batch in enumerate(loader, start=skip):
            if i >= steps_per_epoch * accum:
                break  # leftover batches that cannot fill an accumulation step
            if batch.get("skipped"):
                summary["skipped_videos"] += int(batch["skipped"])
                summary["skipped_paths"] += list(batch.get("skipped_paths") or [])
                log.info(f"skipped {batch['skipped']} unreadable video(s) in epoch {epoch}: {batch.get('skipped_paths')}")
            video = batch["video"]
            labels = batch["label"]
            n_local = int(video.shape[0]) if video.ndim >= 1 else 0
            n_tot = n_local
            if dist_info.distributed:  # every rank must agree to skip an empty batch, else DDP would hang
                n_min = torch.tensor([-n_local], dtype=torch.int64, device=device)
                import torch.distributed as dist

                dist.all_reduce(n_min, op=dist.ReduceOp.MAX)
                n_tot = -int(n_min.item())
            micro += 1
            last_micro = (i + 1) % accum == 0
            if n_tot > 0:
                if video.ndim == 6:
                    video = video[:, 0]  # [B, V=1, T, 3, H, W] -> one training view
                video = video.to(device, non_blocking=True).float()
                labels = labels.to(device, non_blocking=True).long()
                if mixer is not None:
                    video, target = mixer(video, labels)
                else:
                    target = None
                text, is_feat = text_input()
                sync_ctx = fwd.no_sync() if (dist_info.distributed and not last_micro) else contextlib.nullcontext()
                with sync_ctx:
                    with _autocast(device, amp_dtype):
                        logits = fwd(video, text, is_feat)
                    logits = logits.float()
                    if target is not None:
                        loss = soft_target_cross_entropy(logits, target)
                    else:
                        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
                    scaler.scale(loss / accum).backward()
                acc_loss += float(loss.detach()) * n_local
                acc_n += n_local
                step_clips += n_local
            if bar is not None:
                bar.update(1)
            if not last_micro:
                continue
            # ---- optimiser step
            stats = all_reduce_sum(torch.tensor([acc_loss, float(acc_n), 0.0 if math.isfinite(acc_loss) else 1.0],
                                                dtype=torch.float64, device=device))
            mean_loss = float(stats[0] / max(stats[1], 1.0))
            if stats[2] > 0 or not math.isfinite(mean_loss):
                if bar is not None:
                    bar.close()
                err = NonFiniteLossError(global_step + 1, epoch, mean_loss)
                log.error(str(err))
                metrics.close()
                raise err
            if acc_n == 0 and stats[1] == 0:
                optimizer.zero_grad(set_to_none=True)
                acc_loss, acc_n = 0.0, 0
                continue
            grad_norm = None
            if clip_grad is not None:
                scaler.unscale_(optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip_grad)))
            lr_now = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            global_step += 1
            clips_seen += int(stats[1])
            last_loss = mean_loss
            dt = time.time() - t_step
            t_step = time.time()
            throughput = stats[1].item() / max(dt, 1e-9)
            acc_loss, acc_n = 0.0, 0
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr_now:.2e}", clips_s=f"{throughput:.1f}", step=global_step)
            rec = {"loss": mean_loss, "lr": lr_now, "throughput": throughput, "epoch": epoch + (i + 1) / micro_per_epoch}
            if grad_norm is not None:
                rec["grad_norm"] = grad_norm
            metrics.write("train", global_step, **rec)
            if on_step is not None:
                on_step({"step": global_step, "epoch": epoch, **rec})
            if global_step % print_every == 0 or global_step == 1:
                elapsed = time.time() - t_start
                done = global_step - (start_epoch * steps_per_epoch + skip // accum)
                remaining = (min(total_steps, max_steps or total_steps) - global_step) * elapsed / max(done, 1)
                msg = (f"epoch {epoch + 1}/{epochs} step {global_step}/{total_steps} loss {mean_loss:.4f} lr {lr_now:.3e} "
                       f"{throughput:.1f} clips/s eta {_fmt_time(remaining)}")
                (log.info if bar is None else _file_only(log))(msg)
            if delay > 0:
                time.sleep(delay)
            at_epoch_end = (i + 1) == steps_per_epoch * accum
            if save_every and global_step % save_every == 0 and not at_epoch_end:
                save(epoch, i + 1, epoch_complete=False)
            if max_steps is not None and global_step >= int(max_steps):
                stop = True
                summary["stopped_early"] = not at_epoch_end or epoch + 1 < epochs
                if not at_epoch_end:
                    save(epoch, i + 1, epoch_complete=False)
                    mid_epoch_stop = True
                break
        if bar is not None:
            bar.close()
        if mid_epoch_stop:
            break
        # ---- end of epoch: evaluate, checkpoint
        val = None
        if val_loader is not None and ((epoch + 1) % int(t_cfg.get("eval_every", 1)) == 0 or epoch + 1 == epochs):
            text, _ = text_input()
            res = _evaluate(model, val_loader, text, cfg, dist_info, amp_dtype, num_classes)
            val = {k: res[k] for k in ("top1", "top5", "mean_class_acc", "num_samples", "skipped") if k in res}
            summary["val"].append({"epoch": epoch, "step": global_step, **val})
            metrics.write("val", global_step, epoch=epoch + 1, **{k: v for k, v in val.items()})
            log.info(f"epoch {epoch + 1}/{epochs}: val top1 {val['top1']:.2f}% top5 {val.get('top5', float('nan')):.2f}% "
                     f"({val.get('num_samples')} videos) train loss {last_loss:.4f}")
            model.train()
        is_best = val is not None and val["top1"] > best_metric
        if is_best:
            best_metric = float(val["top1"])
        save(epoch, micro_per_epoch, epoch_complete=True, is_best=is_best)
        barrier()

    train_time = time.time() - t_start
    summary.update({"steps": global_step, "train_time_s": train_time, "final_loss": last_loss, "best_val_top1": best_metric,
                    "clips_seen": clips_seen})
    log.info(f"training done: {global_step} steps in {_fmt_time(train_time)}; {summary['skipped_videos']} unreadable video(s) skipped")

    # ---------------------------------------------------------------- final multi-view test
    test_list = d_cfg.get("test_list") or d_cfg.get("val_list")
    if t_cfg.get("final_test", True) and test_list and not summary["stopped_early"]:
        nc_, ncr = int(cfg["test"]["num_clips"]), int(cfg["test"]["num_crops"])
        test_ds = _dataset(cfg, test_list, "test", nc_, ncr, frame_cache=frame_cache)
        test_loader = build_loader(test_ds, int(cfg["test"].get("batch_size") or bs), train=False, num_workers=workers,
                                   distributed=dist_info.distributed, seed=seed)
        text, _ = text_input()
        model.eval()
        res = _evaluate(model, test_loader, text, cfg, dist_info, amp_dtype, num_classes)
        summary["test_result"] = res
        summary["test"] = {k: res[k] for k in ("top1", "top5", "mean_class_acc", "num_samples", "skipped") if k in res}
        summary["test"]["views"] = f"{nc_}x{ncr}"
        metrics.write("test", global_step, **{k: v for k, v in summary["test"].items() if k != "views"})
        log.info(f"test ({nc_} clips x {ncr} crops): top1 {res['top1']:.2f}% top5 {res.get('top5', float('nan')):.2f}% "
                 f"({res.get('num_samples')} videos)")
    metrics.close()
    if is_main:
        with open(os.path.join(output, "summary.json"), "w") as f:
            json.dump({k: v for k, v in summary.items() if k != "test_result"}, f, indent=2, default=str)
    summary["model"] = model
    summary["class_names"] = class_names
    summary["frame_cache"] = frame_cache
    return summary


def _file_only(log: logging.Logger):
    """Log to the text file only (the progress bar already shows it on the console)."""
    def emit(msg: str) -> None:
        for h in log.handlers:
            if isinstance(h, logging.FileHandler):
                h.emit(log.makeRecord(log.name, logging.INFO, __file__, 0, msg, (), None))
    return emit


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(max(0, s))
    return f"{s // 3600}:{(s % 3600) // 60:02d}:{s % 60:02d}"
