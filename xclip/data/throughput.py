"""Measure decoded clips/s of the data pipeline on this machine.

``python -m xclip.data.throughput [--videos 8] [--frames 300] [--size 256x340]
[--workers 0 2] [--decoders decord pyav]`` writes synthetic H.264 videos
(Kinetics-like by default: 300 frames of 340x256, 30 fps) to a temporary
folder, then times, per decoder: decoding alone (8 frames, segment
sampling), and the full training and single-view test pipelines
(decode + transforms to 224) through :func:`xclip.data.build_loader` with
each worker count. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import numpy as np
import torch


def write_test_videos(root: str, n: int, frames: int, h: int, w: int) -> str:
    """``n`` mp4 clips of a smooth moving pattern plus noise under ``root`` (they compress like camera
    footage, not like flat colour) and their list file (labels ``i % 4``); returns the list file's path."""
    from .lists import write_video_list
    from .video_io import write_video

    rng = np.random.default_rng(0)
    items = []
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        # smooth moving pattern + noise: compresses like camera footage, not like flat colour
        f = np.empty((frames, h, w, 3), np.uint8)
        for t in range(frames):
            base = 128 + 60 * np.sin((xx + 3 * t + 17 * i) / 23.0) * np.cos((yy - 2 * t) / 31.0)
            for c in range(3):
                f[t, :, :, c] = np.clip(base + 40 * c + rng.normal(0, 8, (h, w)), 0, 255)
        p = os.path.join(root, f"v{i}.mp4")
        write_video(p, f, fps=30, crf=23)
        items.append((p, i % 4))
    lf = os.path.join(root, "list.txt")
    write_video_list(items, lf, root)
    return lf


def _time_loader(ds, workers: int, batch: int, repeats: int) -> float:
    from .loader import build_loader, set_epoch

    loader = build_loader(ds, batch, train=ds.train, num_workers=workers, drop_last=False, pin_memory=False,
                          persistent_workers=False)
    n = 0
    # first pass warms up (worker start, file cache); the timed passes follow
    for b in loader:
        pass
    t0 = time.perf_counter()
    for r in range(repeats):
        set_epoch(loader, r + 1)
        for b in loader:
            n += b["video"].shape[0]
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xclip.data.throughput")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", default="256x340", help="HxW of the synthetic videos")
    ap.add_argument("--num-frames", type=int, default=8, help="frames per clip")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--decoders", nargs="+", default=[d for d in ("torchcodec", "pyav", "decord") if __import__("xclip.data.video_io", fromlist=["x"]).decoder_available(d)])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    h, w = (int(x) for x in args.size.lower().split("x"))
    from .dataset import VideoDataset
    from .sampling import segment_indices
    from .video_io import open_video

    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        lf = write_test_videos(root, args.videos, args.frames, h, w)
        print(f"wrote {args.videos} videos of {args.frames} frames {h}x{w} in {time.perf_counter() - t0:.1f} s; "
              f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
        paths = [os.path.join(root, f"v{i}.mp4") for i in range(args.videos)]
        rows = []
        for dec in args.decoders:
            n, t0 = 0, time.perf_counter()
            for r in range(args.repeats):
                for p in paths:
                    with open_video(p, dec) as rd:
                        idx = segment_indices(len(rd), args.num_frames, train=True,
                                              rng=np.random.default_rng([r, n]))[0]
                        rd.get_frames(idx)
                    n += 1
            rows.append((dec, "decode only (8 frames, open + seek + decode)", 0, n / (time.perf_counter() - t0)))
            for mode in ("train", "test"):
                ds = VideoDataset(lf, root, num_frames=args.num_frames, mode=mode, input_size=args.input_size,
                                  decoder=dec)
                for wk in args.workers:
                    rows.append((dec, f"{mode} pipeline (decode + transforms, 1 view)", wk,
                                 _time_loader(ds, wk, 2, args.repeats)))
        print("| decoder | what | workers | clips/s |\n|---|---|---|---|")
        for dec, what, wk, cps in rows:
            print(f"| {dec} | {what} | {wk} | {cps:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
