"""torchcodec, PyAV and decord on real mp4 files: same frames for the same indices, fallbacks,
corrupt files, the decode device check, and `xclip predict` giving the same answer with each.

torchcodec needs FFmpeg's shared libraries (scripts/install.sh installs them); its tests skip
with the reason when it cannot run here. decord is an optional extra; its cases skip without it.
"""

from __future__ import annotations

import os
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from xclip.data import SkipTracker, VideoDataset, build_loader, open_video
from xclip.data import video_io
from video_utils import frame_ids, make_corrupt_video, make_dataset, make_video

HAVE = {d: video_io.decoder_available(d) for d in ("torchcodec", "pyav", "decord")}
needs_torchcodec = pytest.mark.skipif(not HAVE["torchcodec"], reason=video_io.decoder_status("torchcodec")[1])
needs_decord = pytest.mark.skipif(not HAVE["decord"], reason="decord not installed (optional extra)")
DECODER_PARAMS = [pytest.param("torchcodec", marks=needs_torchcodec), "pyav",
                  pytest.param("decord", marks=needs_decord)]

# Colour conversion: each decoder runs its own YUV 4:2:0 -> RGB conversion (swscale flags,
# chroma siting), so pixels may differ by a few levels, never by a different frame.
MEAN_TOL, MAX_TOL = 1.5, 24

def write_long_video(path, num_frames=60, height=64, width=96, keyint=7, bframes=2):
    """H.264 with a keyframe every ``keyint`` frames and B-frames (decode order != display order).

    Frame t carries its index in binary in the top 16 rows (six 16x16 blocks, white = 1; recover
    with :func:`long_ids`), so a decoder that seeks to the wrong frame is caught.
    """
    import av

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(os.fspath(path), mode="w") as c:
        s = c.add_stream("libx264", rate=Fraction(25))
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"crf": "12", "preset": "veryfast", "x264-params": f"keyint={keyint}:min-keyint={keyint}:bframes={bframes}:scenecut=0"}
        for t in range(num_frames):
            f = np.zeros((height, width, 3), np.uint8)
            f[..., 0] = ((xx * 3 + yy + 5 * t) % 256).astype(np.uint8)
            f[..., 1] = (yy * 2 + 7 * t) % 256
            f[..., 2] = np.clip(128 + 60 * np.sin((xx + 2 * t) / 9.0) + rng.normal(0, 3, (height, width)), 0, 255)
            f[:16] = 0
            for b in range(6):
                if (t >> b) & 1:
                    f[:16, 16 * b:16 * b + 16] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return os.fspath(path)


def long_ids(frames: torch.Tensor) -> list[int]:
    band = frames[:, 4:12, :96].float().mean(-1)  # [T, 8, 96], inside the blocks
    bits = band.view(band.shape[0], 8, 6, 16)[..., 4:12].mean((1, 3)) > 128
    return [int(sum(int(v) << b for b, v in enumerate(row.tolist()))) for row in bits]


def _close(a: torch.Tensor, b: torch.Tensor, what: str):
    assert a.shape == b.shape and a.dtype == b.dtype == torch.uint8, (what, a.shape, b.shape)
    d = (a.int() - b.int()).abs()
    assert d.float().mean().item() <= MEAN_TOL and d.max().item() <= MAX_TOL, \
        f"{what}: mean |diff| {d.float().mean().item():.3f}, max {d.max().item()}"


# ------------------------------------------------------------------ same frames everywhere
@pytest.mark.parametrize("size", [(48, 64), (36, 48)])
def test_decoders_return_the_same_frames(tmp_path, size):
    path = make_video(tmp_path / "v.mp4", num_frames=16, height=size[0], width=size[1], seed=3)
    idx = [15, 0, 7, 7, 3]
    outs = {}
    for dec in [d for d in ("torchcodec", "pyav", "decord") if HAVE[d]]:
        with open_video(path, dec) as r:
            assert r.name == dec and len(r) == 16
            try:
                outs[dec] = r.get_frames(idx)
            except video_io.VideoDecodeError:
                if dec == "decord" and size == (36, 48):
                    continue  # decord 0.6 cannot decode this frame size (the reason "auto" falls back)
                raise
        assert outs[dec].shape == (5, *size, 3)
        assert frame_ids(outs[dec]) == idx, dec
    for dec, frames in outs.items():
        _close(frames, outs["pyav"], f"{dec} vs pyav")


@pytest.mark.parametrize("dec", DECODER_PARAMS)
def test_exact_frames_across_keyframes_and_bframes(tmp_path, dec):
    path = write_long_video(tmp_path / "long.mp4")
    idx = [59, 0, 13, 14, 27, 28, 28, 41, 6, 7, 55]  # both sides of GOP boundaries, out of order, repeated
    with open_video(path, "pyav") as r:
        ref = r.get_frames(idx)
    assert long_ids(ref) == idx
    with open_video(path, dec, num_threads=2) as r:
        assert len(r) == 60
        got = r.get_frames(idx)
        assert long_ids(got) == idx
        _close(got, ref, f"{dec} vs pyav")
        # a second, independent request on the same reader (seeks backwards)
        assert long_ids(r.get_frames([3, 50, 2])) == [3, 50, 2]


@needs_torchcodec
def test_torchcodec_matches_pyav_pixel_statistics(tmp_path):
    # A tighter look than the tolerance: the two are the same FFmpeg conversion up to rounding.
    path = write_long_video(tmp_path / "long.mp4", num_frames=20)
    idx = list(range(20))
    with open_video(path, "pyav") as a, open_video(path, "torchcodec") as b:
        fa, fb = a.get_frames(idx), b.get_frames(idx)
    d = (fa.int() - fb.int()).abs().float()
    print(f"torchcodec vs pyav: mean |diff| {d.mean():.4f}, max {d.max():.0f}, equal {(d == 0).float().mean():.4f}")
    assert d.mean() <= MEAN_TOL


# ------------------------------------------------------------------ auto and fallbacks
def test_auto_picks_torchcodec_when_usable_else_pyav(tmp_path):
    path = make_video(tmp_path / "v.mp4", num_frames=8)
    r = open_video(path, "auto")
    assert r.name == ("torchcodec" if HAVE["torchcodec"] else "pyav") == video_io.auto_decoder()
    assert frame_ids(r.get_frames([0, 7])) == [0, 7]


def test_auto_without_torchcodec_uses_pyav(tmp_path, monkeypatch):
    path = make_video(tmp_path / "v.mp4", num_frames=8)
    monkeypatch.setattr(video_io, "decoder_status", lambda name: (name != "torchcodec", "simulated: no FFmpeg"))
    r = open_video(path, "auto")
    assert r.name == "pyav" and frame_ids(r.get_frames([1, 5])) == [1, 5]
    with pytest.raises(ValueError, match="data.decoder=torchcodec: simulated"):
        video_io.check_decoder("torchcodec")
    with pytest.raises(video_io.VideoDecodeError, match="simulated"):
        open_video(path, "torchcodec")


@needs_torchcodec
def test_auto_falls_back_when_torchcodec_cannot_open(tmp_path, monkeypatch):
    path = make_video(tmp_path / "v.mp4", num_frames=8)

    def broken(p, threads, device="cpu"):
        raise video_io.VideoDecodeError(f"torchcodec cannot open {p}: simulated")

    monkeypatch.setattr(video_io, "TorchCodecReader", broken)
    r = open_video(path, "auto")
    assert r.name == "pyav" and frame_ids(r.get_frames([0, 7])) == [0, 7]


@needs_torchcodec
def test_auto_falls_back_when_torchcodec_fails_to_decode(tmp_path, monkeypatch):
    path = make_video(tmp_path / "v.mp4", num_frames=8)

    def fail(self, idx):
        raise video_io.VideoDecodeError(f"torchcodec cannot decode {self.path}: simulated")

    monkeypatch.setattr(video_io.TorchCodecReader, "get_frames", fail)
    r = open_video(path, "auto")
    assert r.name == "torchcodec" and len(r) == 8
    assert frame_ids(r.get_frames([1, 6])) == [1, 6] and r.name == "pyav"
    with pytest.raises(video_io.VideoDecodeError, match="simulated"):  # asked for by name: no fallback
        open_video(path, "torchcodec").get_frames([0])


# ------------------------------------------------------------------ corrupt files
@pytest.mark.parametrize("kind", ["garbage", "truncated"])
@pytest.mark.parametrize("dec", DECODER_PARAMS + ["auto"])
def test_corrupt_file_raises_decode_error_naming_file(tmp_path, kind, dec):
    path = make_corrupt_video(tmp_path / f"{kind}.mp4", kind)
    with pytest.raises(video_io.VideoDecodeError, match=str(path)):
        with open_video(path, dec) as r:  # some decoders open a truncated file and fail on decode
            r.get_frames(list(range(len(r))))


@pytest.mark.parametrize("dec", [pytest.param("torchcodec", marks=needs_torchcodec), "auto"])
def test_corrupt_video_skipped_and_counted(tmp_path, dec):
    root = tmp_path / "videos"
    _, _, items = make_dataset(root, num_videos=2, num_classes=2)
    make_corrupt_video(root / "bad.mp4", "truncated")
    lf = tmp_path / "with_bad.txt"
    lf.write_text(f"{items[0][0]} 0\nbad.mp4 1\n{items[1][0]} 1\n")
    ds = VideoDataset(lf, root, mode="test", num_frames=4, input_size=32, decoder=dec)
    with pytest.warns(RuntimeWarning, match="bad.mp4"):
        assert ds[1] is None
    assert ds.skipped == 1 and ds.skipped_paths == [str(root / "bad.mp4")]
    tracker = SkipTracker()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(build_loader(ds, batch_size=2, train=False, num_workers=0))
    for b in batches:
        tracker.update(b)
    assert [b["index"].tolist() for b in batches] == [[0], [2]]
    assert tracker.count == 1 and "bad.mp4" in tracker.report("eval")


# ------------------------------------------------------------------ decode device
def test_decode_device_errors_name_the_key(tmp_path):
    path = make_video(tmp_path / "v.mp4", num_frames=4)
    lf = tmp_path / "l.txt"
    lf.write_text("v.mp4 0\n")
    assert video_io.check_decode_device("cpu") == "cpu"
    with pytest.raises(ValueError, match=r"data.decode_device='tpu'"):
        video_io.check_decode_device("tpu")
    with pytest.raises(ValueError, match=r"data.decode_device=cuda: GPU decoding \(NVDEC\) needs decoder torchcodec"):
        video_io.check_decode_device("cuda", "pyav")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"data.decode_device=cuda: (no CUDA GPU|GPU decoding needs torchcodec)"):
            video_io.check_decode_device("cuda", "auto")
        with pytest.raises(ValueError, match="device=cuda"):
            open_video(path, "torchcodec", device="cuda")
        with pytest.raises(ValueError, match="decode_device=cuda"):
            VideoDataset(lf, tmp_path, mode="test", num_frames=2, input_size=32, decode_device="cuda")
    with pytest.raises(ValueError, match="decode_device=cuda: GPU decoding"):
        VideoDataset(lf, tmp_path, mode="test", num_frames=2, input_size=32, decoder="pyav",
                     decode_device="cuda")


@pytest.mark.gpu
@needs_torchcodec
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nvdec_matches_cpu(tmp_path):
    path = write_long_video(tmp_path / "long.mp4")
    idx = [59, 0, 13, 14, 28, 41]
    with open_video(path, "torchcodec", device="cuda") as g, open_video(path, "pyav") as c:
        fg, fc = g.get_frames(idx), c.get_frames(idx)
    assert fg.is_cuda and long_ids(fg.cpu()) == idx
    _close(fg.cpu(), fc, "nvdec vs pyav")


# ------------------------------------------------------------------ xclip predict
@needs_torchcodec
def test_predict_same_with_torchcodec_and_pyav(tmp_path):
    """`xclip predict --decoder torchcodec` and `--decoder pyav` on real mp4 files: same predictions."""
    import json

    import xclip
    from xclip.eval.predict import main
    from xclip.model.checkpoints import save_checkpoint
    from test_predict import NAMES, TINY  # the tiny random checkpoint test_predict.py uses

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth"
    save_checkpoint(xclip.create_model(dict(TINY), num_frames=None).eval(), ckpt)
    videos = [make_video(tmp_path / f"clip{i}.mp4", num_frames=12 + 5 * i, height=36 + 12 * i, width=48 + 16 * i,
                         seed=i) for i in range(3)]
    videos.append(write_long_video(tmp_path / "long.mp4"))
    out = {}
    for dec in ("torchcodec", "pyav"):
        js = tmp_path / f"{dec}.json"
        assert main([*videos, "--checkpoint", str(ckpt), "--labels", ",".join(NAMES), "--top-k", "6",
                     "--decoder", dec, "--json", str(js), "--device", "cpu", "--no-progress"]) == 0
        out[dec] = json.load(open(js))
    for a, b in zip(out["torchcodec"], out["pyav"]):
        assert a["video"] == b["video"]
        pa = {t["label"]: t["prob"] for t in a["top_k"]}
        pb = {t["label"]: t["prob"] for t in b["top_k"]}
        assert pa.keys() == pb.keys() == set(NAMES)
        for k in pa:
            assert abs(pa[k] - pb[k]) <= 1e-3, (a["video"], k, pa[k], pb[k])
        print(os.path.basename(a["video"]), "top-1", a["top_k"][0]["label"], "/", b["top_k"][0]["label"],
              "max |dp|", max(abs(pa[k] - pb[k]) for k in pa))
