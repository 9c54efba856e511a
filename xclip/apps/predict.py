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

log = logging.getLogger("xclip.predict")


@torch.no_grad()
def predict(model, paths: Sequence[str], class_names: Sequence[str], *, top_k: int = 5, num_frames: int | None = None,
            batch_size: int = 4, num_clips: int = 1, num_crops: int = 1, template: str = "{}", device="cpu",
            decoder: str = "auto", num_workers: int = 0, progress: bool = True, mean=None, std=None,
            crop_pct: float | None = None) -> list[dict]:
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
                          crop_pct=DEFAULT_CROP_PCT if crop_pct is None else float(crop_pct))
        ds = build_dataset(data, [(p, 0) for p in paths], mode="test", num_frames=T, input_size=cfg.image_resolution,
                           num_clips=num_clips, num_crops=num_crops, root="")
    for m in ds.missing:
        log.error("missing video file: %s", m)
    loader = build_data_loader(data, ds, batch_size, train=False, num_workers=num_workers, pin_memory=False,
                               distributed=False)
    model = model.to(device).eval()
    tokens = tokenize([template.format(n) for n in class_names], context_length=cfg.context_length)
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
    p.add_argument("--template", default="{}", help="prompt template, e.g. 'a video of {}'")
    p.add_argument("--decoder", default="auto", choices=["auto", "torchcodec", "pyav", "decord"])
    p.add_argument("--crop-pct", type=float, default=None,
                   help="one-crop view: short side to input/crop_pct, centre crop (default 0.875; 1.0 for the demo's models)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="also write the predictions to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        from xclip.data import read_labels
        from xclip.model import load_pretrained
        from xclip.runtime import parse_views, select_device

        names = read_labels(args.labels)
        clips, crops = parse_views(args.views)
        device = select_device(args.device or "auto")
        model = load_pretrained(args.checkpoint, num_frames=args.frames)
        out = predict(model, args.videos, names, top_k=args.top_k, num_frames=args.frames,
                      batch_size=args.batch_size, num_clips=clips, num_crops=crops, template=args.template,
                      device=device, decoder=args.decoder, num_workers=args.num_workers,
                      progress=not args.no_progress, crop_pct=args.crop_pct)
    except ValueError as e:
        print(f"xclip predict: error: {e}", file=sys.stderr)
        return 2
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
