"""``xclip demo``: the whole system on synthetic videos, no download, no GPU.

1. generates coloured shapes moving in four directions as real mp4 files with
   official-format lists (class = colour x shape x motion, named in words),
   holding a few classes out of training entirely;
2. trains a tiny X-CLIP from scratch, text encoder included, with the real
   training loop (:func:`xclip.engine.train`);
3. evaluates top-1 on the test clips of the trained classes and zero-shot
   top-1 on the held-out classes, named only by text;
4. repeats training and evaluation with the cross-frame modules off
   (``cross_frame=False``: no message tokens, no MIT, mean-pooled frames);
5. writes ``<output>/report.md`` with the numbers, training curves and
   confusion matrices (PNG).

``--quick`` is the shortened version the test suite runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import textwrap
import time
from typing import Any

import torch

from xclip.config import RunConfig
from xclip.runtime import keep_freed_memory
from xclip.data import FrameCache, build_data_loader, build_dataset, parse_video_list, read_labels
from xclip.engine import evaluate, train
from xclip.engine.metrics import confusion_matrix, plot_confusion_matrix
from xclip.engine.trainer import trim_tokens
from xclip.model import tokenize

from .demo_data import ShapesSpec, generate_dataset

__all__ = ["DEMO_CONFIG", "demo_config", "run_demo", "main"]

# The embedded default; configs/demo.yaml is the same recipe as a file (a test checks they agree).
DEMO_CONFIG: dict[str, Any] = {
    "seed": 0,
    "output": "demo_out/run_crossframe",
    "model": {
        "arch": {
            "embed_dim": 64, "image_resolution": 32, "vision_layers": 3, "vision_width": 64, "vision_patch_size": 8,
            "vision_heads": 2, "transformer_width": 64, "transformer_heads": 2, "transformer_layers": 2,
            "context_length": 16, "mit_layers": 1, "mit_heads": 2, "prompt_layers": 1, "prompt_heads": 2,
            "prompt_alpha": 0.1, "cross_frame": True,
        },
        "num_frames": 8,
        "fix_text": False,
    },
    "data": {
        "root": "demo_out/data",
        "train_list": "demo_out/data/train.txt",
        "val_list": "demo_out/data/val.txt",
        "test_list": "demo_out/data/test.txt",
        "labels": "demo_out/data/labels_train.csv",
        "input_size": 32,
        "num_workers": 0,
        # torchcodec when installed, else PyAV: the same FFmpeg decode, the same pixels (tested), torchcodec
        # ~8x less time for the demo's 1,956 clips (measured: 1.5 against 12 ms a clip)
        "decoder": "auto",
        "cache_frames": True,  # each clip decoded once, then served from memory
        # The clips are drawn at the model's input size: no resize, no crop (measured: resizing to 37 px and
        # cropping back to 32 slows learning the direction of motion several-fold).
        "crop_pct": 1.0,
        "augment": {"flip": 0.0, "jitter": 0.0, "grayscale": 0.0, "scales": [1.0]},
    },
    "train": {
        # 24 epochs (1,080 steps): measured on the lossless clips, seed 0, X-CLIP test top-1 / zero-shot / against
        # all 36 names: 24 epochs 95.0 / 100 / 90.6%, 26: 97.7 / 99.0 / 76.0%, 28: 95.7 / 100 / 92.7%,
        # 36: 96.7 / 100 / 89.6% (README); 24 keeps the demo under 5 minutes on 2 cores
        "epochs": 24, "warmup_epochs": 2, "lr": 1.0e-3, "new_module_lr_mult": 10.0, "text_lr_mult": 1.0,
        # The text tower starts from scratch too. Trained from the first step, it maps "<object> moving left /
        # right / up / down" to one point within ~100 steps (the video side cannot tell motions apart yet, so
        # nothing keeps them apart) and no gradient separates them again; held still for 10 epochs, its random
        # but distinct features give the video side a motion target first, then it trains.
        "text_freeze_epochs": 10,
        "weight_decay": 0.05, "batch_size": 32, "accumulation_steps": 1, "clip_grad": 1.0, "amp": "none",
        "label_smoothing": 0.1, "mixup": 0.0, "cutmix": 0.0, "device": "cpu", "eval_every": 5,
        "keep_epoch_checkpoints": 1,  # the newest epoch checkpoint and best.pth (43 MB each: the tokenizer's
                                      # 49k-entry embedding table and its AdamW moments)
        # One intra-op thread per training; the two trainings (X-CLIP, mean-pooled) run side by side in two
        # processes (run_demo's `jobs`). Measured on the 2-core machine while other jobs ran: 2 threads cost
        # 2.9 s of CPU per step (OpenMP threads spin while their partner waits for a core), 1 thread 0.2 s.
        # One thread also makes every reduction's order fixed, so the numbers do not depend on the load.
        "num_threads": 1,
    },
    "eval": {"num_clips": 1, "num_crops": 1},
    "log": {"print_every": 50, "tensorboard": True},
}


def demo_config(output: str, data_root: str, run_name: str, *, cross_frame: bool, overrides: list[str] = ()) -> RunConfig:
    cfg = copy.deepcopy(DEMO_CONFIG)
    cfg["output"] = os.path.join(output, run_name)
    d = cfg["data"]
    d["root"] = data_root
    for key, name in (("train_list", "train.txt"), ("val_list", "val.txt"), ("test_list", "test.txt"),
                      ("labels", "labels_train.csv")):
        d[key] = os.path.join(data_root, name)
    cfg["model"]["arch"]["cross_frame"] = bool(cross_frame)
    return RunConfig.from_dict(cfg).replace(overrides)


def _evaluate_split(model, list_file: str, root: str, class_names: list[str], cfg: RunConfig, desc: str,
                    frame_cache=None) -> dict:
    ds = build_dataset(cfg.data, list_file, mode="test", num_frames=cfg.model.num_frames, seed=cfg.seed,
                       frame_cache=frame_cache, root=root)
    loader = build_data_loader(cfg.data, ds, cfg.train.batch_size, train=False)
    tokens = trim_tokens(tokenize(list(class_names)), model)
    return evaluate(model, loader, tokens, device="cpu", num_classes=len(class_names), desc=desc,
                    progress=cfg.log.progress)


def restrict_classes(result: dict, columns: list[int]) -> dict:
    """``result`` (from :func:`evaluate`) as if evaluated against only the classes ``columns``, relabelled 0..k-1.

    The class scores are independent of each other (each prompt attends to the video on its own), so the
    softmax over a subset of the classes is the full softmax's columns renormalised. Labels are kept as given
    (they must already index ``columns``).
    """
    p = result["probs"][:, columns].double()
    p = (p / p.sum(dim=1, keepdim=True).clamp_min(1e-300)).float()
    labels = result["labels"]
    n = int(labels.numel())
    top1 = 100.0 * float((p.argmax(1) == labels).float().mean()) if n else float("nan")
    return dict(result, probs=p, top1=top1, num_classes=len(columns))


def _read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _plot_curves(runs: dict[str, str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, run_dir in runs.items():
        recs = _read_metrics(run_dir)
        tr = [r for r in recs if r["kind"] == "train"]
        va = [r for r in recs if r["kind"] == "val"]
        if tr:
            ax1.plot([r["step"] for r in tr], [r["loss"] for r in tr], label=label, alpha=0.85)
        if va:
            ax2.plot([r["epoch"] for r in va], [r["top1"] for r in va], marker="o", label=label)
    ax1.set_xlabel("optimiser step")
    ax1.set_ylabel("training loss")
    ax1.set_title("training loss")
    ax1.legend()
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation top-1 (%)")
    ax2.set_ylim(0, 100)
    ax2.set_title("validation accuracy (trained classes)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _confusion(result: dict, names: list[str], path: str, title: str) -> None:
    cm = confusion_matrix(result["probs"], result["labels"], num_classes=len(names))
    # the figure is sized to the class count (5.5 in for 6 classes): wrap the title to fit its width
    width_chars = int((4 + 0.25 * len(names)) * 6.5)
    plot_confusion_matrix(cm, names, path, title=textwrap.fill(title, max(24, width_chars), break_on_hyphens=False))


def _plot_against_all(result: dict, names: list[str], first_held: int, path: str, title: str) -> str:
    """The held-out clips (rows: their true class) against every class name (columns), as counts.

    The held-out names are the last columns, framed; a count outside the frame is a clip given a trained name,
    one in the frame off the diagonal a clip given another held-out name.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    k, held = len(names), names[first_held:]
    preds = result["probs"].argmax(1).tolist()
    labels = result["labels"].tolist()  # indices into names (>= first_held)
    counts = torch.zeros(len(held), k)
    for p, t in zip(preds, labels):
        counts[t - first_held, p] += 1
    rows = counts.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.26 * k + 3), 0.42 * len(held) + 3.6))
    try:
        im = ax.imshow((counts / rows).numpy(), vmin=0, vmax=1, cmap="Blues", aspect="auto", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01, label="fraction of the true class")
        for i in range(len(held)):
            for j in range(k):
                c = int(counts[i, j])
                if c:
                    ax.text(j, i, str(c), ha="center", va="center", fontsize=7,
                            color="white" if counts[i, j] / rows[i, 0] > 0.5 else "black")
        ax.add_patch(Rectangle((first_held - 0.5, -0.5), k - first_held, len(held), fill=False, lw=2, ec="darkorange"))
        ax.set_xticks(range(k), labels=list(names), rotation=90, fontsize=7)
        ax.set_yticks(range(len(held)), labels=list(held), fontsize=7)
        for t in ax.get_xticklabels()[first_held:]:
            t.set_color("darkorange")
        ax.set_xlabel(f"predicted name (trained: first {first_held}; held out: framed, orange)")
        ax.set_ylabel("true class (held out)")
        top1 = 100.0 * sum(p == t for p, t in zip(preds, labels)) / max(len(labels), 1)
        ax.set_title(textwrap.fill(f"{title}: top-1 {top1:.1f}%", 110))
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def _parse(name: str) -> tuple[str, str, str]:
    colour, shape, _, motion = name.split()
    return colour, shape, motion


_AXIS = {"left": "horizontal", "right": "horizontal", "up": "vertical", "down": "vertical"}


def attribute_accuracy(result: dict, names: list[str], pred_names: list[str] | None = None) -> dict:
    """Percent of clips whose predicted class has the right colour / shape / motion / motion axis.

    ``pred_names`` names the columns of ``result["probs"]`` when they differ from ``names``
    (the label names), e.g. a zero-shot test against every class.
    """
    pred_names = pred_names or names
    preds = result["probs"].argmax(dim=1).tolist()
    labels = result["labels"].tolist()
    n = max(len(labels), 1)
    out = {}
    for k, key in enumerate(("colour", "shape", "motion")):
        out[key] = 100.0 * sum(_parse(pred_names[p])[k] == _parse(names[t])[k] for p, t in zip(preds, labels)) / n
    out["motion_axis"] = 100.0 * sum(_AXIS[_parse(pred_names[p])[2]] == _AXIS[_parse(names[t])[2]]
                                     for p, t in zip(preds, labels)) / n
    return out


def _motion_confusions(result: dict, names: list[str]) -> float:
    """Share of errors whose predicted class differs from the truth only in the direction of motion."""
    preds = result["probs"].argmax(dim=1).tolist()
    labels = result["labels"].tolist()
    wrong = [(p, t) for p, t in zip(preds, labels) if p != t]
    if not wrong:
        return float("nan")
    same_obj = sum(1 for p, t in wrong if names[p].split(" moving ")[0] == names[t].split(" moving ")[0])
    return 100.0 * same_obj / len(wrong)


def demo_spec(quick: bool = False, held_out_pairs: bool = False) -> ShapesSpec:
    """The demo's data set (``quick``: the test suite's few clips of the same classes)."""
    if quick:
        return ShapesSpec(train_per_class=4, val_per_class=1, test_per_class=2, zeroshot_per_class=3,
                          held_out_pairs=held_out_pairs)
    return ShapesSpec(held_out_pairs=held_out_pairs)


# The test suite's shortened run: fewer clips (demo_spec(quick=True)), steps and layers.
QUICK_OVERRIDES = ["train.epochs=2", "train.text_freeze_epochs=1", "train.batch_size=16", "train.warmup_epochs=0", "model.arch.vision_layers=1",
                   "model.arch.transformer_layers=1", "log.tensorboard=false"]


def _train_and_evaluate(run_name: str, cross_frame: bool, label: str, output: str, data_root: str,
                        extra: list[str], cache, threads: int | None = None) -> dict:
    """One of the demo's trainings, its evaluations and confusion matrices; returns its row of results.json.

    Runs in the calling process or in a forked one (``threads`` then sets its torch threads first).
    """
    if threads:
        torch.set_num_threads(threads)
    train_names = read_labels(os.path.join(data_root, "labels_train.csv"))
    held_names = read_labels(os.path.join(data_root, "labels_zeroshot.csv"))
    all_names = train_names + held_names
    zs_list = os.path.join(data_root, "zeroshot.txt")
    cfg = demo_config(output, data_root, run_name, cross_frame=cross_frame, overrides=extra)
    print(f"[demo] training {label}: {cfg.train.epochs} epochs of batch {cfg.train.batch_size}, "
          f"output {cfg.output}", flush=True)
    t_run, c_run = time.time(), time.process_time()
    torch.manual_seed(cfg.seed)
    summary = train(cfg, frame_cache=cache)
    model = summary["model"].eval()
    t_train = time.time() - t_run
    test = summary["test_result"]
    # The held-out clips are encoded once, against every class name (trained + held out: the generalised
    # zero-shot test); the test among the held-out names alone is the same scores restricted to their columns.
    off = len(train_names)
    zs_all = _evaluate_split(model, zs_list, data_root, all_names, cfg, "zero-shot (all classes)", cache)
    zs_all = dict(zs_all, labels=zs_all["labels"] + off)
    zs = restrict_classes(dict(zs_all, labels=zs_all["labels"] - off), list(range(off, len(all_names))))
    zs_all_top1 = 100.0 * float((zs_all["probs"].argmax(1) == zs_all["labels"]).float().mean())
    r = {
        "label": label, "cross_frame": cross_frame, "train_time_s": t_train, "steps": summary["steps"],
        "test_top1": float(test["top1"]), "test_top5": float(test["top5"]), "test_videos": int(test["num_samples"]),
        "test_chance": 100.0 / len(train_names),
        "test_attributes": attribute_accuracy(test, train_names),
        "zeroshot_top1": float(zs["top1"]), "zeroshot_videos": int(zs["labels"].numel()),
        "zeroshot_chance": 100.0 / len(held_names), "zeroshot_attributes": attribute_accuracy(zs, held_names),
        "zeroshot_all_classes_top1": zs_all_top1, "zeroshot_all_classes_chance": 100.0 / len(all_names),
        "zeroshot_all_classes_attributes": attribute_accuracy(zs_all, all_names),
        "motion_only_errors_pct": _motion_confusions(test, train_names),
        "final_loss": summary["final_loss"], "val": summary["val"], "run_dir": cfg.output,
        "threads": torch.get_num_threads(),
    }
    _confusion(test, train_names, os.path.join(output, f"confusion_test_{run_name}.png"),
               f"test, trained classes: {label}")
    _confusion(zs, held_names, os.path.join(output, f"confusion_zeroshot_{run_name}.png"),
               f"zero-shot, held-out classes: {label}")
    _plot_against_all(zs_all, all_names, off, os.path.join(output, f"zeroshot_all_names_{run_name}.png"),
                      f"held-out clips against all {len(all_names)} names: {label}")
    r["cpu_time_s"] = time.process_time() - c_run
    a = r["test_attributes"]
    print(f"[demo] {label}: test top-1 {r['test_top1']:.1f}% ({r['test_videos']} clips; colour {a['colour']:.0f}%, "
          f"shape {a['shape']:.0f}%, motion {a['motion']:.0f}%), zero-shot top-1 {r['zeroshot_top1']:.1f}% over "
          f"{len(held_names)} unseen classes (chance {r['zeroshot_chance']:.1f}%), {zs_all_top1:.1f}% against all "
          f"{len(all_names)} names; trained in {t_train:.0f} s", flush=True)
    return r


def _start_methods() -> list[str]:
    import multiprocessing as mp

    return mp.get_all_start_methods()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run_demo(output: str = "demo_out", *, quick: bool = False, ablation: bool = True, spec: ShapesSpec | None = None,
             overrides: list[str] = (), progress: bool = True, jobs: int | None = None) -> dict:
    """Generate the data, train and evaluate (both models), write the report; returns results.json's dict.

    ``jobs``: trainings run at once, each in its own process (forked after the frames are decoded, so they
    share them), default one per CPU up to the number of trainings. Each training uses ``train.num_threads``
    torch threads (1 in the recipe), so the numbers are the same whatever ``jobs`` is and whatever else runs.
    """
    t0, cpu0 = time.time(), time.process_time() + _children_cpu()
    keep_freed_memory()  # before the fork: both trainings reuse their activations' memory (xclip.runtime)
    output = os.path.abspath(output)
    os.makedirs(output, exist_ok=True)
    spec = spec or demo_spec(quick)
    data_root = os.path.join(output, "data")
    n_classes = len(spec.colours) * len(spec.shapes) * len(spec.motions)
    extra = (QUICK_OVERRIDES if quick else []) + list(overrides) + ([] if progress else ["log.progress=false"])
    demo_config(output, data_root, "run_crossframe", cross_frame=True, overrides=extra)  # a typo fails here, not
    # after the data are made
    print(f"[demo] generating {n_classes} classes of moving-shape videos in {data_root}", flush=True)
    info = generate_dataset(data_root, spec, progress=progress, workers=min(2, _cpus()))
    t_data = time.time() - t0
    print(f"[demo] {info['counts']} clips in {t_data:.1f} s; held out for zero-shot: {', '.join(info['held_out_classes'])}",
          flush=True)

    runs = [("run_crossframe", True, "cross-frame (X-CLIP)")]
    if ablation:
        runs.append(("run_meanpool", False, "no cross-frame (mean-pooled frames)"))
    jobs = max(1, min(len(runs), _cpus() if jobs is None else int(jobs)))
    if "fork" not in _start_methods():
        jobs = 1
    train_names = read_labels(os.path.join(data_root, "labels_train.csv"))
    held_names = read_labels(os.path.join(data_root, "labels_zeroshot.csv"))
    results: dict[str, Any] = {"spec": info["spec"], "counts": info["counts"], "trained": train_names,
                               "held_out": held_names, "runs": {}}
    cfg0 = demo_config(output, data_root, runs[0][0], cross_frame=True, overrides=extra)  # validates the overrides
    cache = None
    if cfg0.data.cache_frames:
        # one decode of every clip, shared by both runs (and by the forked processes)
        cache = FrameCache(cfg0.data.decoder)
        t_fill = time.time()
        lists = [cfg0.data.train_list, cfg0.data.val_list, cfg0.data.test_list, os.path.join(data_root, "zeroshot.txt")]
        cache.fill([os.path.join(data_root, p) for lf in lists for p, _ in parse_video_list(lf, allow_empty=True)],
                   progress=progress and jobs == 1)
        print(f"[demo] {len(cache)} clips decoded into memory in {time.time() - t_fill:.1f} s", flush=True)
    if jobs == 1:
        for run_name, cross_frame, label in runs:
            results["runs"][run_name] = _train_and_evaluate(run_name, cross_frame, label, output, data_root, extra, cache)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        print(f"[demo] {len(runs)} trainings at once, one process each ({cfg0.train.num_threads or 'default'} "
              "torch thread(s) each; progress bars off, the log prints every "
              f"{cfg0.log.print_every} steps)", flush=True)
        child_extra = extra + ["log.progress=false"]
        threads = cfg0.train.num_threads or max(1, _cpus() // jobs)
        global _FORKED_CACHE
        _FORKED_CACHE = cache  # inherited by the forked processes (not pickled through the pipe)
        try:
            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("fork")) as ex:
                futures = {name: ex.submit(_forked_run, name, cf, label, output, data_root, child_extra, threads)
                           for name, cf, label in runs}
                for name, fut in futures.items():
                    results["runs"][name] = fut.result()
        finally:
            _FORKED_CACHE = None
    _plot_curves({results["runs"][k]["label"]: results["runs"][k]["run_dir"] for k in results["runs"]},
                 os.path.join(output, "curves.png"))
    results["wall_time_s"] = time.time() - t0
    results["data_time_s"] = t_data
    results["threads"] = cfg0.train.num_threads or torch.get_num_threads()
    results["jobs"] = jobs
    results["cpu_count"] = os.cpu_count()
    results["cpu_time_s"] = time.process_time() + _children_cpu() - cpu0  # this process's and its children's
    results["quick"] = bool(quick)
    report = _write_report(output, results, info, quick)
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"[demo] done in {results['wall_time_s']:.0f} s. Report: {report}", flush=True)
    return results


_FORKED_CACHE = None


def _forked_run(*args) -> dict:
    return _train_and_evaluate(*args[:6], _FORKED_CACHE, *args[6:])


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _write_report(output: str, results: dict, info: dict, quick: bool) -> str:
    runs = results["runs"]
    spec = info["spec"]
    n_all = len(info["trained_classes"]) + len(info["held_out_classes"])
    lines = [
        "# X-CLIP demo: moving shapes" + (" (quick, shortened)" if quick else ""),
        "",
        f"Synthetic videos: {n_all} classes (colour x shape x motion: {', '.join(spec['colours'])} x "
        f"{', '.join(spec['shapes'])} x moving {', '.join(spec['motions'])}), {spec['frames']} frames of "
        f"{spec['size']}x{spec['size']} px per clip, mp4 (H.264, "
        f"{'lossless' if spec['crf'] == 0 else 'crf ' + str(spec['crf'])}). Clips: {info['counts']}.",
        f"Held out of training entirely ({len(info['held_out_classes'])} classes, recognised zero-shot from their "
        "names only; every word of them occurs in trained classes): "
        + ", ".join(f"*{n}*" for n in info["held_out_classes"]) + ".",
        "",
        "A small X-CLIP (text encoder included) trained from scratch on the CPU with `xclip.engine`. "
        "The ablation turns the cross-frame modules off (`cross_frame=False`: no message tokens, no MIT; "
        "the frame features are mean-pooled), so it sees a clip as an unordered set of frames: a shape moving "
        "left passes through the same positions as one moving right, only in the opposite order.",
        "",
        "| model | test top-1, trained classes | zero-shot top-1, held-out classes | zero-shot vs all class names | training |",
        "|---|---|---|---|---|",
    ]
    for r in runs.values():
        lines.append(
            f"| {r['label']} | **{r['test_top1']:.1f}%** ({r['test_videos']} clips, chance {r['test_chance']:.1f}%; "
            f"top-5 {r['test_top5']:.1f}%) | **{r['zeroshot_top1']:.1f}%** ({r['zeroshot_videos']} clips, chance "
            f"{r['zeroshot_chance']:.1f}%) | {_pct(r['zeroshot_all_classes_top1'])} (chance "
            f"{r['zeroshot_all_classes_chance']:.1f}%) | {r['steps']} steps, {r['train_time_s']:.0f} s |")
    lines += [
        "",
        "Per attribute (share of clips whose predicted class has the right colour / shape / motion direction / "
        "motion axis, horizontal or vertical):",
        "",
        "| model | split | colour | shape | motion | motion axis |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs.values():
        for split, key in (("test", "test_attributes"), ("zero-shot", "zeroshot_attributes"),
                           ("zero-shot vs all names", "zeroshot_all_classes_attributes")):
            a = r[key]
            lines.append(f"| {r['label']} | {split} | {a['colour']:.1f}% | {a['shape']:.1f}% | {a['motion']:.1f}% | "
                         f"{a['motion_axis']:.1f}% |")
    lines += ["", "Reading the numbers:", ""] + _reading_notes(runs, info, n_all)
    lines += [
        "",
        f"Wall time {results['wall_time_s']:.0f} s for everything (data generation {results['data_time_s']:.0f} s, "
        f"trainings, evaluations, report; CPU time {results['cpu_time_s']:.0f} s): {len(runs)} training(s), "
        f"{results['jobs']} at a time, {results['threads']} torch thread(s) each, on {results['cpu_count']} CPU(s).",
        "",
        "## Training curves",
        "",
        "![training curves](curves.png)",
        "",
        "## Confusion matrices",
        "",
    ]
    for name, r in runs.items():
        lines += [f"### {r['label']}", "", f"![test confusion](confusion_test_{name}.png)", "",
                  f"![zero-shot confusion](confusion_zeroshot_{name}.png)", "",
                  f"![held-out clips against all names](zeroshot_all_names_{name}.png)", ""]
    lines += ["Each run's log, TensorBoard scalars, config and checkpoints are in its folder "
              f"({', '.join(os.path.basename(r['run_dir']) for r in runs.values())}); numbers in results.json.", ""]
    path = os.path.join(output, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def _reading_notes(runs: dict, info: dict, n_all: int) -> list[str]:
    """The report's bullet points: what the zero-shot split tests, and each run's verdict."""
    lines: list[str] = []
    held = [_parse(n) for n in info["held_out_classes"]]
    objects = [(c, sh) for c, sh, _ in held]
    if len(set(objects)) == len(objects):
        lines.append("- No two held-out classes share colour and shape, so the zero-shot test among the held-out "
                     "classes is decided by colour and shape alone; it does not test motion. The test against all "
                     f"{n_all} class names does (and also shows the usual bias towards trained names).")
    else:
        paired = sum(1 for o in objects if objects.count(o) > 1)
        lines.append(f"- {paired} of the {len(objects)} held-out classes come in pairs of one object moving in "
                     "opposite directions, so the zero-shot test among the held-out classes needs the direction of "
                     "motion: colour and shape alone give at most half of those right. The test against all "
                     f"{n_all} class names also shows the usual bias towards trained names.")
    for r in runs.values():
        a = r["test_attributes"]
        if r["cross_frame"]:
            met = "meets" if r["test_top1"] >= 90.0 else "misses"
            lines.append(f"- {r['label']}: test top-1 {r['test_top1']:.1f}% {met} the 90% target; motion direction "
                         f"{a['motion']:.1f}% (chance 25%), motion axis {a['motion_axis']:.1f}% (chance 50%).")
        else:
            lines.append(f"- {r['label']}: test top-1 {r['test_top1']:.1f}%; motion direction {a['motion']:.1f}% "
                         f"(chance 25%), motion axis {a['motion_axis']:.1f}% (chance 50%). Without frame order the "
                         "axis can be told from the set of positions but the direction cannot, so this run is "
                         "expected near 50% direction at best; the gap to the cross-frame run is what frame order "
                         "through the cross-frame modules buys.")
    return lines


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{x:.1f}%"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xclip demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="demo_out", help="output folder (default: ./demo_out)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (fewer clips, epochs and layers), for tests")
    p.add_argument("--no-ablation", action="store_true", help="skip the run without cross-frame modules")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--held-out-pairs", action="store_true",
                   help="hold out objects moving in two opposite directions (zero-shot then needs the direction)")
    p.add_argument("--jobs", type=int, default=None,
                   help="trainings run at once, one process each (default: one per CPU, at most 2); "
                        "the numbers do not depend on it")
    p.add_argument("overrides", nargs="*", help="training config overrides, e.g. train.epochs=20")
    args = p.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        print(f"xclip demo: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    try:
        run_demo(args.output, quick=args.quick, ablation=not args.no_ablation, overrides=args.overrides,
                 progress=not args.no_progress, spec=demo_spec(args.quick, args.held_out_pairs), jobs=args.jobs)
    except ValueError as e:
        from xclip.apps.cli import user_error

        return user_error("xclip demo", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
