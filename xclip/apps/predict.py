"""``xclip predict VIDEO [VIDEO ...] --checkpoint CKPT --labels LABELS [--top-k 5]``

Top-k labels with probabilities for each video. ``LABELS`` is a labels CSV
(``id,name``) or ``"a,b,c"``; each name becomes a prompt through
``--template`` (default ``"{}"``). Videos are decoded with the test pipeline
(``--views CLIPSxCROPS``, default 1x1; ``--frames`` defaults to the model's
``num_frames``), batched (``--batch-size``) with a tqdm progress bar. A video
that cannot be decoded is reported and skipped; the exit status is 1 if any
was skipped. ``--json OUT`` also writes ``[{"video", "top_k": [{"label",
"prob"}]}]``.

Python API: :func:`predict(model, paths, class_names, ...)` returns the same
list of dicts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence

import torch

from .inference import add_inference_args, inference_model

log = logging.getLogger("xclip.predict")


@torch.no_grad()
def predict(model, paths: Sequence[str], class_names: Sequence[str], *, top_k: int = 5, num_frames: int | None = None,
            batch_size: int = 4, num_clips: int = 1, num_crops: int = 1, template: str = "{}", device="cpu",
            decoder: str = "auto", num_workers: int = 0, progress: bool = True, mean=None, std=None,
            crop_pct: float | None = None, sampling: str | None = None) -> list[dict]:
    from xclip.config import DataConfig
    from xclip.data import build_data_loader, build_dataset
    from xclip.data.transforms import DEFAULT_CROP_PCT
    from xclip.engine import fuse_views
    from xclip.model import tokenize

    if not paths:
        raise ValueError("predict: no videos given")
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    device = torch.device(device)
    cfg = model.config
    T = num_frames or cfg.num_frames
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing files are reported below, once
        data = DataConfig(decoder=decoder, mean=list(mean) if mean else None, std=list(std) if std else None,
                          crop_pct=DEFAULT_CROP_PCT if crop_pct is None else float(crop_pct),
                          sampling=sampling or "segment")
        ds = build_dataset(data, [(p, 0) for p in paths], mode="test", num_frames=T, input_size=cfg.image_resolution,
                           num_clips=num_clips, num_crops=num_crops, root="")
    for m in ds.missing:
        log.error("missing video file: %s", m)
    loader = build_data_loader(data, ds, batch_size, train=False, num_workers=num_workers, pin_memory=False,
                               distributed=False)
    model = model.to(device).eval()
    prompts = [template.format(n) for n in class_names]
    warn_truncated(prompts, cfg.context_length)
    tokens = tokenize(prompts, context_length=cfg.context_length)
    text_emb = model.encode_text(tokens.to(device))
    k = min(top_k, len(class_names))
    results: dict[int, dict] = {}
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="predict", unit="batch")
    for batch in it:
        for p in batch["skipped_paths"]:
            log.error("could not decode %s: skipped", p)
        if batch["video"].shape[0] == 0:
            continue
        B, V = batch["video"].shape[:2]
        v_emb, p_emb = model.encode_video(batch["video"].flatten(0, 1).to(device))
        probs = fuse_views(model.logits_from_features(v_emb, p_emb, text_emb), V).cpu()
        if not torch.isfinite(probs).all():
            bad = ds.samples[int(batch["index"][0])][0]
            raise ValueError(f"the model gives non-finite scores (NaN/inf) for {bad} and others in its batch: "
                             f"the weights of {getattr(model, 'checkpoint_path', 'the model')} or the inputs are broken")
        top = probs.topk(k, dim=1)
        for row, idx in enumerate(batch["index"].tolist()):
            results[idx] = {"video": ds.samples[idx][0],
                            "top_k": [{"label": class_names[c], "prob": float(pr)}
                                      for pr, c in zip(top.values[row].tolist(), top.indices[row].tolist())]}
    return [results[i] for i in sorted(results)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xclip predict", description="top-k labels for video files")
    p.add_argument("videos", nargs="+", help="video files")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--labels", required=True, help="labels CSV (id,name) or comma-separated names")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: the model's)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--views", default="1x1", help="CLIPSxCROPS (default 1x1)")
    p.add_argument("--template", default=None,
                   help="prompt template, e.g. 'a video of {}' (default: the checkpoint's, else '{}')")
    p.add_argument("--decoder", default="auto", choices=["auto", "torchcodec", "pyav", "decord"])
    p.add_argument("--crop-pct", type=float, default=None,
                   help="one-crop view: short side to input/crop_pct, centre crop (default: the checkpoint's, else 0.875)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="also write the predictions to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    add_inference_args(p)  # --dtype, --compile
    return p


def warn_truncated(prompts, context_length: int) -> None:
    from xclip.model.tokenizer import truncated_prompts

    cut = truncated_prompts(prompts, context_length)
    if cut:
        log.warning("warning: %d class prompt(s) exceed the model's %d tokens and are cut short (first: %r); "
                    "shorten them or they may become indistinguishable", len(cut), context_length, cut[0][:80])


def check_output_file(path: str, flag: str) -> None:
    """Fail before any work when ``path`` cannot be written (missing folder, a folder, no permission)."""
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path!r}: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {path!r}: folder {folder!r} is not writable")


def stored_preprocessing(model, args) -> dict:
    """The checkpoint's preprocessing with the flags given on the command line over it (logged once)."""
    pre = dict(getattr(model, "preprocessing", None) or {})
    flags = {"crop_pct": args.crop_pct, "text_template": args.template}
    over = {k: v for k, v in flags.items() if v is not None}
    if pre:
        log.info("preprocessing from the checkpoint: %s%s", ", ".join(f"{k} {v!r}" for k, v in pre.items()
                                                                        if k not in over),
                 "; from flags: " + ", ".join(f"{k} {v!r}" for k, v in over.items()) if over else "")
    pre.update(over)
    return pre


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        from xclip.config import check_template
        from xclip.data import read_labels
        from xclip.model import load_pretrained
        from xclip.runtime import parse_views, select_device

        names = read_labels(args.labels)
        clips, crops = parse_views(args.views)
        device = select_device(args.device or "auto")
        if args.template is not None:
            check_template(args.template, "--template")
        if args.json:
            check_output_file(args.json, "--json")
        model = load_pretrained(args.checkpoint, num_frames=args.frames)
        pre = stored_preprocessing(model, args)
        model = inference_model(model, args.dtype, args.compile, device)
        out = predict(model, args.videos, names, top_k=args.top_k, num_frames=args.frames,
                      batch_size=args.batch_size, num_clips=clips, num_crops=crops,
                      template=pre.get("text_template", "{}"), device=device, decoder=args.decoder,
                      num_workers=args.num_workers, progress=not args.no_progress, crop_pct=pre.get("crop_pct"),
                      mean=pre.get("mean"), std=pre.get("std"), sampling=pre.get("sampling"))
    except ValueError as e:
        from xclip.apps.cli import user_error

        return user_error("xclip predict", e)
    for r in out:
        print(r["video"])
        for t in r["top_k"]:
            print(f"  {t['prob']:7.2%}  {t['label']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    failed = len(args.videos) - len(out)
    if failed:
        print(f"{failed} of {len(args.videos)} video(s) could not be read (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
