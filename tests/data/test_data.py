"""Data pipeline on real generated mp4 files: lists, decoders, sampling, dataset, loader."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from xclip.data import (IMAGENET_MEAN, IMAGENET_STD, SkipTracker, ShardSampler, VideoDataset, build_loader,
                        collate_videos, dense_indices, open_video, read_labels, read_video_list,
                        segment_indices, set_epoch)
from xclip.data import video_io
from video_utils import GREEN_BASE, GREEN_STEP, frame_ids, make_corrupt_video, make_dataset, make_video

# decord is an optional extra now (pip install 'xclip-kernels[decord]'): its cases skip without it
DECORD = pytest.param("decord", marks=pytest.mark.skipif(not video_io.decoder_available("decord"),
                                                          reason="decord not installed (optional extra)"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    list_file, labels, items = make_dataset(root, num_videos=5, num_classes=3)
    return root, list_file, labels, items


# ----------------------------------------------------------------------------- lists
def test_read_video_list_parses_official_format(tmp_path):
    lf = tmp_path / "l.txt"
    lf.write_text("# comment\na/x.mp4 3\n\nb/with space.mp4   0\n")
    items = read_video_list(lf, tmp_path / "root")
    assert items == [(str(tmp_path / "root" / "a" / "x.mp4"), 3), (str(tmp_path / "root" / "b" / "with space.mp4"), 0)]
    assert all(os.path.isabs(p) for p, _ in items)


@pytest.mark.parametrize("content,line,what", [
    ("a.mp4 1\nb.mp4\n", 2, "expected"),
    ("a.mp4 1\nc.mp4 x\n", 2, "not an integer"),
    ("a.mp4 -1\n", 1, "negative"),
])
def test_read_video_list_errors_name_file_and_line(tmp_path, content, line, what):
    lf = tmp_path / "bad.txt"
    lf.write_text(content)
    with pytest.raises(ValueError) as e:
        read_video_list(lf, tmp_path)
    msg = str(e.value)
    assert str(lf) in msg and f"line {line}" in msg and what in msg


def test_read_video_list_missing_or_empty(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_video_list(tmp_path / "nope.txt", tmp_path)
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="no samples"):
        read_video_list(tmp_path / "empty.txt", tmp_path)


def test_read_labels(tmp_path):
    assert read_labels("riding a bike, eating spaghetti,x") == ["riding a bike", "eating spaghetti", "x"]
    (tmp_path / "h.csv").write_text("id,name\n1,b\n0,a\n2,\"c, d\"\n")
    assert read_labels(str(tmp_path / "h.csv")) == ["a", "b", "c, d"]
    (tmp_path / "n.csv").write_text("0,a\n1,b\n")
    assert read_labels(tmp_path / "n.csv") == ["a", "b"]
    (tmp_path / "gap.csv").write_text("id,name\n0,a\n2,c\n")
    with pytest.raises(ValueError, match="missing \\[1\\]"):
        read_labels(tmp_path / "gap.csv")
    (tmp_path / "dup.csv").write_text("0,a\n0,b\n")
    with pytest.raises(ValueError, match="twice"):
        read_labels(tmp_path / "dup.csv")
    with pytest.raises(ValueError, match="empty class name"):
        read_labels("a,,b")
    with pytest.raises(ValueError, match="does not exist"):
        read_labels(str(tmp_path / "absent.csv"))


# -------------------------------------------------------------------------- decoders
@pytest.mark.skipif(not video_io.decoder_available("decord"), reason="decord not installed (optional extra)")
def test_decoders_return_identical_frames(tmp_path):
    path = make_video(tmp_path / "v.mp4", num_frames=16, height=48, width=64, seed=3)
    idx = [15, 0, 7, 7, 3]
    outs = {}
    for dec in ("decord", "pyav"):
        with open_video(path, dec, num_threads=1) as r:
            assert len(r) == 16
            outs[dec] = r.get_frames(idx)
        assert outs[dec].shape == (5, 48, 64, 3) and outs[dec].dtype == torch.uint8
        assert frame_ids(outs[dec]) == idx  # the decoded pixels are the requested frames
    assert torch.equal(outs["decord"], outs["pyav"])
    with open_video(path, "pyav", num_threads=2) as r:  # threaded PyAV decodes the same frames
        assert torch.equal(r.get_frames(idx), outs["pyav"])
    with pytest.raises(ValueError, match="out of range"):
        open_video(path, "pyav").get_frames([16])
    with pytest.raises(ValueError, match="decoder must be one of"):
        open_video(path, "ffmpeg")


# auto's choice and fallbacks (torchcodec first, then PyAV): tests/data/test_decoders.py


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
@pytest.mark.parametrize("dec", [DECORD, "pyav", "auto"])
def test_corrupt_file_raises_decode_error_naming_file(tmp_path, kind, dec):
    path = make_corrupt_video(tmp_path / f"{kind}.mp4", kind)
    with pytest.raises(video_io.VideoDecodeError, match=str(path)):
        open_video(path, dec)


# -------------------------------------------------------------------------- sampling
def test_segment_test_indices_hand_computed():
    # n=16, T=8: segments [0,2), [2,4), ... -> centres 1, 3, ..., 15 (the official test sampler's)
    assert segment_indices(16, 8, train=False) == [[1, 3, 5, 7, 9, 11, 13, 15]]
    # n=10, T=4: segments [0,2) [2,5) [5,7) [7,10)
    assert segment_indices(10, 4, train=False) == [[1, 3, 6, 8]]
    assert segment_indices(10, 4, train=False, num_clips=2) == [[0, 2, 5, 7], [1, 4, 6, 9]]
    # fewer frames than segments: frames repeat
    assert segment_indices(3, 4, train=False, num_clips=2) == [[0, 0, 1, 2], [0, 0, 1, 2]]


def test_segment_train_indices_one_per_segment():
    seen = [set() for _ in range(4)]
    for s in range(200):
        (idx,) = segment_indices(10, 4, train=True, rng=np.random.default_rng(s))
        for i, (lo, hi) in enumerate([(0, 2), (2, 5), (5, 7), (7, 10)]):
            assert lo <= idx[i] < hi
            seen[i].add(idx[i])
    assert seen == [{0, 1}, {2, 3, 4}, {5, 6}, {7, 8, 9}]  # every frame of a segment is reachable
    a = segment_indices(100, 8, train=True, rng=np.random.default_rng([1, 2, 3]))
    assert a == segment_indices(100, 8, train=True, rng=np.random.default_rng([1, 2, 3]))


def test_dense_indices_hand_computed():
    # T=4, interval 2 -> span 7; n=30 -> max start 23
    assert dense_indices(30, 4, 2, train=False) == [[11, 13, 15, 17]]
    assert dense_indices(30, 4, 2, train=False, num_clips=3) == [[0, 2, 4, 6], [11, 13, 15, 17], [23, 25, 27, 29]]
    assert dense_indices(5, 4, 2, train=False) == [[0, 2, 4, 4]]  # short video: last frame repeats
    starts = {dense_indices(30, 4, 2, train=True, rng=np.random.default_rng(s))[0][0] for s in range(300)}
    assert starts == set(range(24))
    with pytest.raises(ValueError, match="frame_interval"):
        dense_indices(30, 4, 0, train=False)


# --------------------------------------------------------------------------- dataset
def _green_ids(video: torch.Tensor) -> list[int]:
    """Frame ids of a normalised [T, 3, H, W] clip of make_video (green channel is uniform)."""
    g = video[:, 1].flatten(1).median(dim=1).values * IMAGENET_STD[1] + IMAGENET_MEAN[1]
    return [int(round((v.item() * 255 - GREEN_BASE) / GREEN_STEP)) for v in g]


@pytest.mark.parametrize("dec", [DECORD, "pyav"])
def test_test_mode_views_are_the_expected_frames_and_deterministic(data, dec):
    root, list_file, _, items = data
    ds = VideoDataset(list_file, root, num_frames=4, mode="test", input_size=32, num_clips=2, num_crops=3,
                      decoder=dec)
    out = ds[1]
    assert out["label"] == items[1][1] and out["index"] == 1
    v = out["video"]
    assert v.shape == (6, 4, 3, 32, 32) and v.dtype == torch.float32
    # n=16, T=4 -> segments of 4; clip 0 takes offset 1, clip 1 offset 3; views are clip-major
    for view in range(6):
        assert _green_ids(v[view]) == ([1, 5, 9, 13] if view < 3 else [3, 7, 11, 15])
    assert torch.equal(v, ds[1]["video"])  # deterministic multi-view
    ds2 = VideoDataset(list_file, root, num_frames=4, mode="test", input_size=32, num_clips=2, num_crops=3,
                       decoder=dec, seed=123)
    assert torch.equal(v, ds2[1]["video"])  # independent of the seed too
    dense = VideoDataset(list_file, root, num_frames=4, mode="test", input_size=32, sampling="dense",
                         frame_interval=3, num_clips=2, decoder=dec)
    d = dense[0]["video"]
    assert [_green_ids(d[k]) for k in range(2)] == [[0, 3, 6, 9], [6, 9, 12, 15]]


def test_train_mode_reproducible_per_seed_epoch_index(data):
    root, list_file, _, _ = data
    kw = dict(num_frames=4, mode="train", input_size=32)
    ds = VideoDataset(list_file, root, **kw)
    a = ds[2]["video"]
    assert a.shape == (1, 4, 3, 32, 32)
    torch.manual_seed(999)  # the global RNG state must not matter
    assert torch.equal(a, ds[2]["video"])
    ds.set_epoch(1)
    b = ds[2]["video"]
    assert not torch.equal(a, b)
    resumed = VideoDataset(list_file, root, **kw)
    resumed.set_epoch(1)
    assert torch.equal(b, resumed[2]["video"])
    assert torch.equal(a, resumed[(0, 2)]["video"])  # (epoch, index) keys as the loader sends them
    other = VideoDataset(list_file, root, seed=5, **kw)
    assert not torch.equal(a, other[2]["video"])


def test_missing_files_reported_before_run(data, tmp_path):
    root, _, _, items = data
    lf = tmp_path / "with_missing.txt"
    lf.write_text("".join(f"{r} {lab}\n" for r, lab in items[:2]) + "cls0/absent.mp4 0\n")
    with pytest.warns(UserWarning, match="(?s)1 of 3 videos .* missing.*absent.mp4"):
        ds = VideoDataset(lf, root, mode="test", num_frames=4, input_size=32)
    assert len(ds) == 2 and ds.missing == [str(root / "cls0" / "absent.mp4")]


def test_corrupt_video_skipped_counted_and_reported(data, tmp_path):
    root, _, _, items = data
    make_corrupt_video(root / "bad.mp4", "truncated")
    lf = tmp_path / "with_bad.txt"
    lf.write_text(f"{items[0][0]} 0\nbad.mp4 1\n{items[1][0]} 1\n")
    ds = VideoDataset(lf, root, mode="test", num_frames=4, input_size=32)
    with pytest.warns(RuntimeWarning, match="bad.mp4"):
        assert ds[1] is None
    assert ds.skipped == 1 and ds.skipped_paths == [str(root / "bad.mp4")]
    tracker = SkipTracker()
    for workers in (0, 1):
        loader = build_loader(ds, batch_size=2, train=False, num_workers=workers)
        batches = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for b in loader:
                batches.append(b)
                tracker.update(b)
        assert [b["index"].tolist() for b in batches] == [[0], [2]]
        assert [b["skipped_paths"] for b in batches] == [[str(root / "bad.mp4")], []]
        assert batches[0]["video"].shape == (1, 1, 4, 3, 32, 32)
    assert tracker.count == 2
    msg = tracker.report("epoch 0")
    assert "2 video(s)" in msg and "bad.mp4" in msg


def test_collate_all_failed_gives_empty_batch():
    b = collate_videos([None, None])
    assert b["video"].shape[0] == 0 and b["label"].shape == (0,) and b["index"].dtype == torch.long
    assert b["skipped"] == 2


def test_train_loader_epochs_reproducible(data):
    root, list_file, _, _ = data
    ds = VideoDataset(list_file, root, num_frames=4, mode="train", input_size=32)

    def run(epoch, workers):
        loader = build_loader(ds, batch_size=2, train=True, num_workers=workers, seed=7)
        set_epoch(loader, epoch)
        return [(b["index"].tolist(), b["video"]) for b in loader]

    e0, e0_again, e1 = run(0, 0), run(0, 2), run(1, 0)
    assert len(e0) == 2 and all(v.shape == (2, 1, 4, 3, 32, 32) for _, v in e0)  # drop_last in train
    for (i, v), (j, w) in zip(e0, e0_again):  # worker processes draw the same frames and crops
        assert i == j and torch.equal(v, w)
    assert [i for i, _ in e0] != [i for i, _ in e1]
    # persistent workers keep their dataset copies across epochs: the epoch must still reach them
    loader = build_loader(ds, batch_size=2, train=True, num_workers=1, seed=7, persistent_workers=True)
    for epoch, expect in ((0, e0), (1, e1)):
        set_epoch(loader, epoch)
        got = [(b["index"].tolist(), b["video"]) for b in loader]
        assert [i for i, _ in got] == [i for i, _ in expect]
        assert all(torch.equal(v, w) for (_, v), (_, w) in zip(got, expect))


def test_shard_sampler_every_sample_once():
    ds = list(range(7))
    shards = [list(ShardSampler(ds, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))
    assert [len(ShardSampler(ds, 3, r)) for r in range(3)] == [3, 2, 2]
    with pytest.raises(ValueError, match="rank"):
        ShardSampler(ds, 2, 2)


def test_bad_arguments_raise_value_error(data):
    root, list_file, _, _ = data
    for kw, what in [(dict(mode="val"), "mode"), (dict(sampling="tsn"), "sampling"), (dict(num_crops=2), "num_crops"),
                     (dict(num_frames=0), "num_frames"), (dict(decoder="x"), "decoder")]:
        with pytest.raises(ValueError, match=what):
            VideoDataset(list_file, root, **kw)
