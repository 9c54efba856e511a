"""``xclip eval CONFIG --checkpoint CKPT [--views CLIPSxCROPS] [--zero-shot] [key=value ...]``

Evaluates a checkpoint on the config's test list (``data.test_list``, else
``data.val_list``) under ``data.root`` with the class names of
``data.labels`` (prompts ``data.text_template.format(name)``). Views default
to ``eval.num_clips`` x ``eval.num_crops``; ``--views 1x1`` for a single view.
Frames and resolution come from the checkpoint's model config.

``--zero-shot`` evaluates one or more label sets and reports mean ± std:

* ``--split-lists L1 L2 L3`` (and optionally ``--split-labels A B C``, else
  ``data.labels`` for all): e.g. the three HMDB-51 / UCF-101 test splits
  (see :mod:`xclip.engine.zeroshot` to build them from the official files);
* ``--k400-labels K400.csv``: the Kinetics-600 protocol: ``data.labels`` is
  the K600 label set, the test list K600's; three seeded subsets of 160 novel
  classes (``--seed``), each evaluated with its own 160 names;
* neither: the test list with ``data.labels`` (one split).

Writes ``<name>_metrics.json``, ``<name>_per_class.csv`` and
``<name>_confusion.png`` per evaluation (plus ``zeroshot_summary.json``) into
``--output`` (default: ``<checkpoint folder>/eval``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from xclip.runtime import cleanup, parse_views

from .inference import add_inference_args, inference_model

__all__ = ["main", "run", "build_parser", "parse_views"]

log = logging.getLogger("xclip.eval")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xclip eval", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML config (the training config schema)")
    p.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    p.add_argument("--checkpoint", required=True, help="checkpoint (ours, official X-CLIP, or HF directory)")
    p.add_argument("--views", default=None, help="CLIPSxCROPS, default eval.num_clips x eval.num_crops")
    p.add_argument("--zero-shot", action="store_true", help="zero-shot protocol: mean ± std over splits")
    p.add_argument("--split-lists", nargs="+", default=None, help="zero-shot: one test list per split")
    p.add_argument("--split-labels", nargs="+", default=None, help="zero-shot: one labels file per split")
    p.add_argument("--k400-labels", default=None, help="zero-shot on K600's novel classes (K400 labels CSV)")
    p.add_argument("--seed", type=int, default=0, help="seed of the K600 novel-class splits")
    p.add_argument("--list", default=None, help="test list (default data.test_list or data.val_list)")
    p.add_argument("--labels", default=None, help="labels CSV or comma list (default data.labels)")
    p.add_argument("--output", default=None, help="output folder (default <checkpoint dir>/eval)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--amp", default=None, choices=["bf16", "fp16", "none"], help="autocast dtype (default train.amp on CUDA)")
    p.add_argument("--preprocessing", default="checkpoint", choices=["checkpoint", "config"],
                   help="crop_pct, mean/std, sampling and prompt template: the checkpoint's (default, when it "
                        "stores them) or the config's data section")
    p.add_argument("--no-progress", action="store_true")
    add_inference_args(p)  # --dtype, --compile
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # overrides may follow the options
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run(args)
    except ValueError as e:
        from xclip.apps.cli import user_error

        return user_error("xclip eval", e)


def run(args) -> int:
    import torch.distributed as dist

    from xclip.runtime import init_distributed

    ours = not (dist.is_available() and dist.is_initialized())
    dist_info = init_distributed(args.device or "auto")
    try:
        return _run(args, dist_info)
    finally:
        if ours:
            cleanup()


_PRE_FIELDS = ("crop_pct", "mean", "std", "sampling", "text_template")


def checkpoint_preprocessing(data, model, checkpoint: str):
    """``data`` with the checkpoint's stored preprocessing over it; each value that differs is logged."""
    import dataclasses

    pre = getattr(model, "preprocessing", None) or {}
    changes = {k: pre[k] for k in _PRE_FIELDS if k in pre and pre[k] != getattr(data, k)}
    for k, v in changes.items():
        log.warning("note: using the checkpoint's %s %r (the config says %r; --preprocessing config to use the "
                    "config's)", k, v, getattr(data, k))
    return dataclasses.replace(data, **changes) if changes else data


def _describe_arch(c) -> str:
    shape = (f"vision {c.vision_width}x{c.vision_layers} patch {c.vision_patch_size} at {c.image_resolution}px, "
             f"text {c.transformer_width}x{c.transformer_layers}")
    return f"{c.arch or 'custom'} ({shape}), {c.num_frames} frames"


def warn_model_differences(cfg, model, checkpoint: str) -> None:
    """Say when the checkpoint's architecture is not the config's, and when X-CLIP modules are untrained."""
    from xclip.model import XCLIPConfig
    from xclip.model.config import arch_config

    mc = model.config
    if getattr(model, "checkpoint_format", None) == "clip":
        log.warning("warning: %s is an OpenAI CLIP checkpoint: the X-CLIP modules (cross-frame messages, MIT, "
                    "prompt generator) are randomly initialised, so these scores are not those of a trained X-CLIP",
                    checkpoint)
    try:
        arch = cfg.model.arch
        want = arch_config(arch) if isinstance(arch, str) else XCLIPConfig.from_dict(dict(arch))
        want = want.replace(num_frames=cfg.model.num_frames)
    except (ValueError, TypeError):
        return
    keys = ("vision_width", "vision_layers", "vision_patch_size", "image_resolution", "transformer_width",
            "transformer_layers", "embed_dim", "num_frames")
    if any(getattr(want, k) != getattr(mc, k) for k in keys):
        log.warning("warning: evaluating the checkpoint's architecture %s; the config's model section says %s",
                    _describe_arch(mc), _describe_arch(want))


def _run(args, dist_info) -> int:
    from xclip.config import load_config
    from xclip.data import build_data_loader, build_dataset, check_list_labels, parse_video_list, read_labels
    from xclip.engine import evaluate, k600_novel_splits, write_eval_outputs
    from xclip.engine.zeroshot import restrict_to_classes
    from xclip.model import load_pretrained, tokenize
    from xclip.apps.predict import warn_truncated
    from xclip.runtime import amp_dtype

    cfg = load_config(args.config, args.overrides)
    data = cfg.data
    root = data.root
    list_file = args.list or data.test_list or data.val_list
    labels_spec = args.labels or data.labels
    if not list_file and not args.split_lists:
        raise ValueError("no test list: set data.test_list / data.val_list or pass --list")
    if not labels_spec and not args.split_labels:
        raise ValueError("no labels: set data.labels or pass --labels")
    clips, crops = parse_views(args.views) if args.views else (cfg.eval.num_clips, cfg.eval.num_crops)
    for flag, value in (("--batch-size", args.batch_size), ("--num-workers", args.num_workers)):
        if value is not None and value < (1 if flag == "--batch-size" else 0):
            raise ValueError(f"{flag} must be >= {1 if flag == '--batch-size' else 0}, got {value}")
    if args.output and os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ValueError(f"--output {args.output!r} is a file, not a folder")
    device = dist_info.device
    amp = amp_dtype(args.amp or cfg.train.amp, device, cuda_only=True)

    model = inference_model(load_pretrained(args.checkpoint), args.dtype, args.compile, device)
    mcfg = model.config
    warn_model_differences(cfg, model, args.checkpoint)
    if args.preprocessing == "checkpoint":
        data = checkpoint_preprocessing(data, model, args.checkpoint)
    template = data.text_template
    batch_size = args.batch_size or cfg.eval.batch_size or cfg.train.batch_size
    out_dir = args.output or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "eval")
    rank0 = dist_info.is_main

    def run_one(name: str, items, class_names: list[str]) -> dict:
        ds = build_dataset(data, items, mode="test", num_frames=mcfg.num_frames, input_size=mcfg.image_resolution,
                           num_clips=clips, num_crops=crops, seed=cfg.seed)
        loader = build_data_loader(data, ds, batch_size, train=False, num_workers=args.num_workers)
        prompts = [template.format(n) for n in class_names]
        warn_truncated(prompts, mcfg.context_length)
        tokens = tokenize(prompts, context_length=mcfg.context_length)
        res = evaluate(model, loader, tokens, device=device, amp_dtype=amp, num_classes=len(class_names),
                       desc=name, progress=not args.no_progress)
        if rank0:
            paths = write_eval_outputs(res, out_dir, class_names, name=name,
                                       extra={"checkpoint": os.path.abspath(args.checkpoint), "views": f"{clips}x{crops}",
                                              "missing": ds.missing})
            log.info("%s: top-1 %.2f  top-5 %.2f  mean-class %.2f  (%d videos, %d skipped, %d missing) -> %s",
                     name, res["top1"], res["top5"], res["mean_class_acc"], res["num_samples"], res["skipped"],
                     len(ds.missing), paths["metrics"])
        return res

    def items_of(lf, class_names=None):
        if class_names is not None:  # every label id names one of the classes (file, line and id otherwise)
            check_list_labels(lf, len(class_names), labels=f"the labels {labels_spec!r}" if lf == list_file
                              else "its labels", what="test list")
        # absolute paths: the dataset would join a relative data.root a second time
        return [(os.path.abspath(os.path.join(root, p)), lab) for p, lab in parse_video_list(lf)]

    if not args.zero_shot:
        names = read_labels(labels_spec)
        run_one("eval", items_of(list_file, names), names)
        return 0

    results = []
    if args.k400_labels:
        k600 = read_labels(labels_spec)
        splits = k600_novel_splits(k600, read_labels(args.k400_labels), seed=args.seed)
        items = items_of(list_file)
        for s, subset in enumerate(splits, 1):
            results.append(run_one(f"zeroshot_split{s}", restrict_to_classes(items, k600, subset), subset))
    else:
        lists = args.split_lists or [list_file]
        labels = args.split_labels or [labels_spec] * len(lists)
        if len(labels) != len(lists):
            raise ValueError(f"--split-labels has {len(labels)} entries for {len(lists)} --split-lists")
        for s, (lf, lab) in enumerate(zip(lists, labels), 1):
            names = read_labels(lab)
            results.append(run_one(f"zeroshot_split{s}", items_of(lf, names), names))
    if rank0:
        _write_zeroshot_summary(results, out_dir, f"{clips}x{crops}", args.checkpoint)
    return 0


def _write_zeroshot_summary(results: list[dict], out_dir: str, views: str, checkpoint: str) -> None:
    """zeroshot_summary.json: top-1/top-5 per split and their mean and standard deviation."""
    from xclip.engine import summarise_splits

    top1s = [r["top1"] for r in results]
    mean1, std1 = summarise_splits(top1s)
    mean5, std5 = summarise_splits([r["top5"] for r in results])
    summary = {"top1_per_split": top1s, "top1_mean": mean1, "top1_std": std1, "top5_mean": mean5,
               "top5_std": std5, "splits": len(results), "views": views, "checkpoint": os.path.abspath(checkpoint)}
    with open(os.path.join(out_dir, "zeroshot_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    log.info("zero-shot over %d split(s): top-1 %.1f ± %.1f, top-5 %.1f ± %.1f", len(results), mean1, std1,
             mean5, std5)


if __name__ == "__main__":
    sys.exit(main())
