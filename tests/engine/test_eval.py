"""Evaluation: metrics on hand-made logits, view fusion, evaluate() (single and 2-process gloo),
zero-/few-shot protocol helpers, report files and the `xclip eval` command."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from xclip.engine import (accuracy_topk, confusion_matrix, evaluate, fuse_views, k600_novel_splits, make_kshot_list,
                        mean_class_accuracy, per_class_accuracy, plot_confusion_matrix, summarise_splits,
                        write_eval_outputs, write_kshot_lists)
from xclip.engine.zeroshot import hmdb51_test_splits, restrict_to_classes, split_camel, ucf101_test_splits
from video_utils import make_corrupt_video, make_dataset

TINY = dict(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=32, vision_patch_size=16,
            transformer_width=32, transformer_heads=2, transformer_layers=1, num_frames=4, vision_heads=2,
            mit_heads=2, prompt_heads=2)


def tiny_model(seed=0):
    import xclip

    torch.manual_seed(seed)
    return xclip.create_model(dict(TINY), num_frames=None).eval()


# ------------------------------------------------------------------------------ metrics
def test_accuracy_topk_hand_made():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.2],   # label 1: top-1 hit
                           [0.8, 0.1, 0.7, 0.0],   # label 2: 2nd -> top-2 hit
                           [0.0, 0.1, 0.2, 0.3],   # label 0: last -> miss until k = 4
                           [0.5, 0.4, 0.3, 0.6]])  # label 1: 3rd
    labels = torch.tensor([1, 2, 0, 1])
    assert accuracy_topk(logits, labels, ks=(1, 2, 3, 4)) == [25.0, 50.0, 75.0, 100.0]
    assert accuracy_topk(logits, labels, ks=(1, 5)) == [25.0, 100.0]  # k > K counts as K
    with pytest.raises(ValueError, match="rows"):
        accuracy_topk(logits, labels[:3])
    with pytest.raises(ValueError, match="out of range"):
        accuracy_topk(logits, torch.tensor([1, 2, 0, 4]))
    with pytest.raises(ValueError, match="empty"):
        accuracy_topk(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))


def test_confusion_and_class_accuracy_hand_made():
    preds = torch.tensor([0, 0, 1, 1, 1, 2, 0])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    cm = confusion_matrix(preds, labels, 4)
    expect = torch.tensor([[2, 1, 0, 0], [0, 2, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(cm, expect)
    pca = per_class_accuracy(preds, labels, 4)
    assert pca[:3].tolist() == pytest.approx([200 / 3, 200 / 3, 0.0]) and math.isnan(pca[3])
    assert mean_class_accuracy(preds, labels, 4) == pytest.approx((200 / 3 + 200 / 3 + 0) / 3)
    # imbalanced: overall accuracy 4/7, mean-class accuracy differs
    scores = F.one_hot(preds, 4).float()
    assert accuracy_topk(scores, labels, ks=(1,))[0] == pytest.approx(400 / 7)
    assert mean_class_accuracy(scores, labels) == pytest.approx(mean_class_accuracy(preds, labels, 4))


def test_fuse_views_is_mean_of_softmax():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0],   # video 0, views 0 and 1
                           [1.0, 1.0, 1.0], [0.0, 3.0, 0.0]])  # video 1
    fused = fuse_views(logits, 2)
    sm = logits.softmax(-1)
    assert torch.allclose(fused, torch.stack([(sm[0] + sm[1]) / 2, (sm[2] + sm[3]) / 2]))
    assert torch.allclose(fused.sum(-1), torch.ones(2))
    # summed softmax differs from averaged logits: view 1's confident vote wins here
    assert fused[0].argmax() == 2 and logits[:2].mean(0).argmax() == 2
    with pytest.raises(ValueError, match="views"):
        fuse_views(logits, 3)


def test_plot_and_report_files(tmp_path):
    k = 3
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    labels = torch.tensor([0, 1, 1, 2])
    res = {"top1": 75.0, "top5": 100.0, "mean_class_acc": mean_class_accuracy(probs, labels), "num_samples": 4,
           "skipped": 1, "skipped_paths": ["x.mp4"], "probs": probs, "labels": labels, "indices": torch.arange(4)}
    paths = write_eval_outputs(res, tmp_path, ["a", "b", "c"], name="t", extra={"views": "1x1"})
    m = json.load(open(paths["metrics"]))
    assert m["top1"] == 75.0 and m["skipped_paths"] == ["x.mp4"] and m["views"] == "1x1"
    assert m["per_class_accuracy"] == {"a": 100.0, "b": 50.0, "c": 100.0}
    rows = open(paths["per_class"]).read().splitlines()
    assert rows[0] == "id,name,samples,correct,accuracy" and rows[2] == "1,b,2,1,50.00"
    png = open(paths["confusion"], "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    with pytest.raises(ValueError, match="class names"):
        plot_confusion_matrix(torch.eye(k), ["a"], tmp_path / "bad.png")


# --------------------------------------------------------------------------- evaluate()
class _TableModel(torch.nn.Module):
    """encode_video returns the clip's first K values as its embedding; text features are the identity."""

    def __init__(self, k):
        super().__init__()
        self.k = k
        self.text_calls = 0

    def encode_text(self, tokens):
        self.text_calls += 1
        return torch.eye(self.k)

    def encode_video(self, video):
        return video.flatten(1)[:, : self.k], torch.zeros(video.shape[0], 1, 1, self.k)

    def logits_from_features(self, v, p, t):
        return v @ t.T


def test_evaluate_fuses_views_and_encodes_text_once():
    k, views = 3, 2
    per_view = torch.tensor([[[3.0, 0, 0], [0, 0, 1.0]],  # video 0 -> fused class 0
                             [[0, 1.0, 0], [0, 2.0, 0]],  # video 1 -> class 1
                             [[0, 0, 0.5], [4.0, 0, 0]]])  # video 2 -> class 0 (label 2: miss)
    video = torch.zeros(3, views, 2, 3, 2, 2)
    video.view(3, views, -1)[:, :, :k] = per_view
    batches = [{"video": video[:2], "label": torch.tensor([0, 1]), "index": torch.tensor([0, 1]), "skipped": 0,
                "skipped_paths": []},
               {"video": torch.zeros(0, 0, 0, 3, 0, 0), "label": torch.zeros(0, dtype=torch.long),
                "index": torch.zeros(0, dtype=torch.long), "skipped": 1, "skipped_paths": ["bad.mp4"]},
               {"video": video[2:], "label": torch.tensor([2]), "index": torch.tensor([3]), "skipped": 0,
                "skipped_paths": []}]
    model = _TableModel(k)
    res = evaluate(model, batches, torch.zeros(k, 77, dtype=torch.long), progress=False)
    assert model.text_calls == 1
    expect = per_view.softmax(-1).mean(1)
    assert torch.allclose(res["probs"], expect)
    assert res["indices"].tolist() == [0, 1, 3] and res["labels"].tolist() == [0, 1, 2]
    assert res["top1"] == pytest.approx(200 / 3) and res["num_samples"] == 3 and res["num_views"] == 2
    assert res["mean_class_acc"] == pytest.approx((100 + 100 + 0) / 3)
    assert res["skipped"] == 1 and res["skipped_paths"] == ["bad.mp4"]


def test_evaluate_tiny_xclip_on_real_videos(tmp_path):
    import xclip
    from xclip.data import VideoDataset, build_loader

    root = tmp_path / "v"
    lf, labels, _ = make_dataset(root, num_videos=3, num_classes=3, height=32, width=40)
    model = tiny_model()
    ds = VideoDataset(lf, root, num_frames=4, mode="test", input_size=32, num_clips=2, num_crops=3)
    tokens = xclip.tokenize(["class 0", "class 1", "class 2"])
    res = evaluate(model, build_loader(ds, 2, train=False, num_workers=0), tokens, progress=False)
    # reference: the model's own forward, view by view, softmax averaged
    with torch.no_grad():
        ref = torch.stack([model(ds[i]["video"], tokens).softmax(-1).mean(0) for i in range(3)])
    assert torch.allclose(res["probs"], ref, atol=1e-5)
    assert res["num_samples"] == 3 and res["num_views"] == 6


# ----------------------------------------------------------------- distributed (2 x gloo)
def _dist_worker(rank, world, init_file, root, list_file, out):
    import torch.distributed as dist

    import xclip
    from xclip.data import VideoDataset, build_loader

    # file rendezvous: no port to pick, release and race for
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        warnings.simplefilter("ignore")
        model = tiny_model()
        ds = VideoDataset(list_file, root, num_frames=4, mode="test", input_size=32)
        loader = build_loader(ds, 2, train=False, num_workers=0)  # distributed auto-detected: ShardSampler
        res = evaluate(model, loader, xclip.tokenize(["a", "b", "c"]), progress=False)
        torch.save({k: res[k] for k in ("probs", "labels", "indices", "num_samples", "skipped", "skipped_paths",
                                         "top1")} | {"local": len(loader.sampler)}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_distributed_evaluate_counts_every_sample_once(tmp_path):
    import torch.multiprocessing as mp

    import xclip
    from xclip.data import VideoDataset, build_loader

    root = tmp_path / "v"
    _, _, items = make_dataset(root, num_videos=6, num_classes=3, height=32, width=40)
    make_corrupt_video(root / "bad.mp4")
    lf = root / "eval.txt"  # 7 entries (5 good + 1 corrupt + 1 good), odd size for 2 ranks
    lf.write_text("".join(f"{r} {lab}\n" for r, lab in items[:5]) + "bad.mp4 1\n" + f"{items[5][0]} {items[5][1]}\n")
    out = str(tmp_path / "res")
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "rendezvous"), str(root), str(lf), out), nprocs=2, join=True)
    r0, r1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    assert (r0["local"], r1["local"]) == (4, 3)  # uneven shards, no padding duplicates
    for r in (r0, r1):  # every rank gets the full, gathered result
        assert r["indices"].tolist() == [0, 1, 2, 3, 4, 6]  # index 5 is the corrupt file
        assert r["num_samples"] == 6 and r["skipped"] == 1 and r["skipped_paths"] == [str(root / "bad.mp4")]
    assert torch.equal(r0["probs"], r1["probs"])
    # same numbers as one process
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = VideoDataset(str(lf), root, num_frames=4, mode="test", input_size=32)
        single = evaluate(tiny_model(), build_loader(ds, 3, train=False, num_workers=0),
                          xclip.tokenize(["a", "b", "c"]), progress=False)
    assert torch.allclose(single["probs"], r0["probs"], atol=1e-6)
    assert torch.equal(single["labels"], r0["labels"]) and single["top1"] == r0["top1"]


# ------------------------------------------------------------------- zero-shot / few-shot
def test_k600_novel_splits_reproducible():
    k400 = [f"action {i}" for i in range(400)]
    k600 = [f"Action_{i}" for i in range(0, 400, 2)] + [f"new action {i}" for i in range(220)]  # 200 shared
    a = k600_novel_splits(k600, k400, seed=0)
    assert a == k600_novel_splits(list(k600), list(k400), seed=0)
    assert len(a) == 3 and all(len(s) == 160 and len(set(s)) == 160 for s in a)
    assert all(c.startswith("new action") for s in a for c in s)  # case/underscore-normalised matching
    assert a[0] != a[1] != a[2]
    assert a != k600_novel_splits(k600, k400, seed=1)
    assert all(s == sorted(s, key=k600.index) for s in a)
    with pytest.raises(ValueError, match="only 100"):
        k600_novel_splits(k600[:300], k400)


def test_summarise_splits_and_restrict():
    mean, std = summarise_splits([60.0, 62.0, 64.0])
    assert mean == pytest.approx(62.0) and std == pytest.approx(math.sqrt(8 / 3))
    assert summarise_splits([60.0, 62.0, 64.0], ddof=1)[1] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        summarise_splits([])
    items = [("a", 0), ("b", 1), ("c", 2), ("d", 1)]
    assert restrict_to_classes(items, ["x", "y", "z"], ["z", "y"]) == [("b", 1), ("c", 0), ("d", 1)]
    with pytest.raises(ValueError, match="not in the label set"):
        restrict_to_classes(items, ["x", "y", "z"], ["w"])


def test_hmdb_and_ucf_split_readers(tmp_path):
    h = tmp_path / "hmdb"
    h.mkdir()
    for s in (1, 2, 3):
        (h / f"brush_hair_test_split{s}.txt").write_text(f"b1.avi {2 if s == 1 else 1}\nb2.avi 2\nb3.avi 0\n")
        (h / f"climb_test_split{s}.txt").write_text(f"c1.avi 2\nc2.avi {2 if s == 3 else 1}\n")
    names, splits = hmdb51_test_splits(h, video_ext=".mp4")
    assert names == ["brush hair", "climb"]
    assert splits[0] == [("brush_hair/b1.mp4", 0), ("brush_hair/b2.mp4", 0), ("climb/c1.mp4", 1)]
    assert splits[2] == [("brush_hair/b2.mp4", 0), ("climb/c1.mp4", 1), ("climb/c2.mp4", 1)]
    u = tmp_path / "ucf"
    u.mkdir()
    (u / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 YoYo\n")
    for s in (1, 2, 3):
        (u / f"testlist0{s}.txt").write_text(f"YoYo/v_YoYo_g0{s}_c01.avi\nApplyEyeMakeup/v_A_g0{s}.avi\n")
    names, splits = ucf101_test_splits(u)
    assert names == ["ApplyEyeMakeup", "YoYo"] and split_camel(names[0]) == "apply eye makeup"
    assert splits[1] == [("YoYo/v_YoYo_g02_c01.avi", 1), ("ApplyEyeMakeup/v_A_g02.avi", 0)]
    (u / "testlist02.txt").write_text("Unknown/v.avi\n")
    with pytest.raises(ValueError, match="line 1"):
        ucf101_test_splits(u)


def test_kshot_lists_seeded(tmp_path):
    lf = tmp_path / "full.txt"
    lf.write_text("".join(f"c{c}/v{i}.mp4 {c}\n" for c in range(4) for i in range(20)))
    for k in (2, 4, 8, 16):
        a = make_kshot_list(lf, k, seed=3)
        assert a == make_kshot_list(str(lf), k, seed=3)
        assert len(a) == 4 * k and all(sum(lab == c for _, lab in a) == k for c in range(4))
        assert len(set(a)) == len(a)
    assert make_kshot_list(lf, 4, seed=3) != make_kshot_list(lf, 4, seed=4)
    paths = write_kshot_lists(lf, tmp_path / "out", ks=(2, 16), seed=3)
    from xclip.data import parse_video_list
    assert parse_video_list(paths[1]) == make_kshot_list(lf, 16, seed=3)
    with pytest.raises(ValueError, match="fewer than k=32"):
        make_kshot_list(lf, 32, seed=0)
    assert len(make_kshot_list(lf, 32, seed=0, allow_fewer=True)) == 80


# ---------------------------------------------------------------------------- xclip eval
def test_xclip_eval_cli_end_to_end(tmp_path):
    from xclip.apps.eval import main
    from xclip.model.checkpoints import save_checkpoint

    root = tmp_path / "v"
    lf, labels, _ = make_dataset(root, num_videos=4, num_classes=2, height=32, width=40)
    ckpt = tmp_path / "ckpt.pth"
    save_checkpoint(tiny_model(), ckpt)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  root: {root}\n  val_list: {lf}\n  labels: {labels}\n  input_size: 32\n"
                   f"  num_workers: 0\nmodel:\n  num_frames: 4\ntest:\n  batch_size: 2\n")
    out = tmp_path / "out"
    assert main([str(cfg), "--checkpoint", str(ckpt), "--views", "2x1", "--output", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    m = json.load(open(out / "eval_metrics.json"))
    assert m["num_samples"] == 4 and m["views"] == "2x1" and 0 <= m["top1"] <= 100
    assert (out / "eval_per_class.csv").exists() and (out / "eval_confusion.png").exists()
    # zero-shot over two "splits" (the same list, with different label sets)
    l2 = tmp_path / "l2.csv"
    l2.write_text("0,jumping\n1,running\n")
    assert main([str(cfg), "--checkpoint", str(ckpt), "--zero-shot", "--split-lists", str(lf), str(lf),
                 "--split-labels", str(labels), str(l2), "--views", "1x1", "--output", str(out),
                 "--no-progress"]) == 0
    s = json.load(open(out / "zeroshot_summary.json"))
    assert s["splits"] == 2 and len(s["top1_per_split"]) == 2
    assert s["top1_mean"] == pytest.approx(sum(s["top1_per_split"]) / 2)
    assert main([str(cfg), "--checkpoint", str(ckpt), "--views", "2x2"]) == 2  # bad views: clean error
    # key=value overrides after the options reach the config (here: a test list that does not exist)
    assert main([str(cfg), "--checkpoint", str(ckpt), "--views", "1x1", f"data.val_list={tmp_path}/none.txt"]) == 2


def test_xclip_eval_cli_relative_data_root(tmp_path, monkeypatch):
    """A relative data.root is joined once (it was joined twice, and every video counted missing)."""
    from xclip.apps.eval import main
    from xclip.model.checkpoints import save_checkpoint

    lf, labels, _ = make_dataset(tmp_path / "v", num_videos=3, num_classes=2, height=32, width=40)
    save_checkpoint(tiny_model(), tmp_path / "ckpt.pth")
    (tmp_path / "cfg.yaml").write_text(f"data:\n  root: v\n  val_list: {lf}\n  labels: {labels}\n  input_size: 32\n"
                                       f"  num_workers: 0\nmodel:\n  num_frames: 4\n")
    monkeypatch.chdir(tmp_path)
    assert main(["cfg.yaml", "--checkpoint", "ckpt.pth", "--views", "1x1", "--output", "out", "--no-progress",
                 "--device", "cpu"]) == 0
    m = json.load(open(tmp_path / "out" / "eval_metrics.json"))
    assert m["num_samples"] == 3 and m["missing"] == [], m


def test_xclip_eval_cli_k600_novel_protocol(tmp_path):
    from xclip.apps.eval import main
    from xclip.model.checkpoints import save_checkpoint

    root = tmp_path / "v"
    k400 = [f"old action {i}" for i in range(40)]
    k600 = k400[:20] + [f"new action {i}" for i in range(165)]
    # videos of classes 20..23 (novel) and 0 (known: never evaluated)
    _, _, items = make_dataset(root, num_videos=5, num_classes=5, height=32, width=40)
    lf = root / "k600_val.txt"
    lf.write_text("".join(f"{rel} {[20, 21, 22, 23, 0][lab]}\n" for rel, lab in items))
    l600, l400 = tmp_path / "k600.csv", tmp_path / "k400.csv"
    l600.write_text("".join(f"{i},{n}\n" for i, n in enumerate(k600)))
    l400.write_text("".join(f"{i},{n}\n" for i, n in enumerate(k400)))
    ckpt = tmp_path / "ckpt.pth"
    save_checkpoint(tiny_model(), ckpt)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  root: {root}\n  val_list: {lf}\n  labels: {l600}\n  num_workers: 0\n")
    out = tmp_path / "out"
    assert main([str(cfg), "--checkpoint", str(ckpt), "--zero-shot", "--k400-labels", str(l400), "--seed", "1",
                 "--views", "1x1", "--output", str(out), "--no-progress", "--batch-size", "4"]) == 0
    s = json.load(open(out / "zeroshot_summary.json"))
    assert s["splits"] == 3
    from xclip.data import read_labels

    splits = k600_novel_splits(read_labels(str(l600)), read_labels(str(l400)), seed=1)
    for i, subset in enumerate(splits, 1):
        m = json.load(open(out / f"zeroshot_split{i}_metrics.json"))
        assert list(m["per_class_accuracy"]) == subset  # the split's 160 names, in K600 order
        assert m["num_samples"] == sum(f"new action {k}" in subset for k in range(4))
