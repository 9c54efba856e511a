"""The CPU inference path against transformers' XCLIPModel on the same weights, timed interleaved in one run.

Three comparisons (the targets of the CPU-path issue):

- video side, float32: ``encode_video`` + ``logits_from_features`` against 400 cached class features, ours
  vs transformers' ``XCLIPModel`` (``save_pretrained`` -> ``XCLIPModel.from_pretrained``, SDPA attention);
- text side, float32: our ``encode_text`` (padding after the batch's last <eot> trimmed) vs transformers'
  ``get_text_features`` fed its tokenizer's ``padding="longest"`` output (a ``CLIPTokenizer`` built from the
  same BPE vocabulary);
- bfloat16 vs our own float32, video side (and text side), on CPUs with native bf16.

Optionally (``--compile``) ``torch.compile`` of our float32 video side.

Every round calls each contender once, in a rotated order, so a busy machine slows all of them alike;
the report gives per-contender medians and the median of the per-round ratios (wall clock, and process CPU
time, which a loaded machine disturbs less). Run as a script::

    python benchmarks/bench_cpu.py [--frames 8 --videos 2 --classes 400 --rounds 15] [--labels CSV]
        [--threads N] [--untrimmed] [--compile] [--json OUT]

Under pytest (``benchmarks/`` is part of the test suite) the same harness runs once at tiny sizes: every
contender runs and agrees with the others; nothing asserts a time.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

import xclip
from xclip.model import cpu_supports_bf16, text_length
from xclip.model.tokenizer import Tokenizer

# class names are drawn from these words (1 to 5 of them) when no labels file is given: Kinetics-400's names
# are 1 to 7 words, 3 to 13 tokens with <sot>/<eot>
_WORDS = ("playing riding eating making cleaning throwing catching passing jumping swimming dancing climbing "
          "pushing pulling washing cutting folding tying shooting kicking bike guitar drums piano ball car dog "
          "horse water snow ice hair shoes dishes windows tennis basketball football golf rope tree wall table "
          "american street on in with at a the of board sign language").split()

TINY = dict(vision_width=64, vision_layers=2, image_resolution=32, vision_patch_size=8, transformer_width=64,
            transformer_layers=2, transformer_heads=2, embed_dim=32, vocab_size=49408)


def class_names(k: int, labels: str | None = None, seed: int = 0) -> list[str]:
    """``k`` class names: the ``name`` column of a labels CSV (``id,name``), or seeded word combinations."""
    if labels:
        with open(labels, newline="", encoding="utf-8") as f:
            names = [row["name"] for row in csv.DictReader(f)]
        if len(names) < k:
            raise ValueError(f"--labels {labels}: {len(names)} names, --classes asks for {k}")
        return names[:k]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        n = int(torch.randint(1, 6, (1,), generator=g))
        out.append(" ".join(_WORDS[int(i)] for i in torch.randint(len(_WORDS), (n,), generator=g)))
    return out


def hf_tokenizer(tk: Tokenizer, workdir: str):
    """transformers' ``CLIPTokenizer`` on the same BPE vocabulary (written out as vocab.json + merges.txt)."""
    from transformers import CLIPTokenizer

    vocab, merges = os.path.join(workdir, "vocab.json"), os.path.join(workdir, "merges.txt")
    with open(vocab, "w", encoding="utf-8") as f:
        json.dump(tk.encoder, f)
    with open(merges, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for (a, b), _ in sorted(tk.ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{a} {b}\n")
    return CLIPTokenizer(vocab, merges)


@dataclass
class Case:
    name: str
    group: str  # "video" or "text"
    fn: Callable[[], torch.Tensor]
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    out: torch.Tensor | None = None


def _hf_video_logits(hf, video: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """XCLIPModel.forward after its text tower (text features cached, as ours): xclip bench's adapter."""
    from xclip.apps.bench import hf_video_logits

    return hf_video_logits(hf, video, text)


def _hf_text(hf, ids, mask) -> torch.Tensor:
    out = hf.get_text_features(input_ids=ids, attention_mask=mask)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def build_cases(args, workdir: str) -> tuple[list[Case], dict]:
    from transformers import XCLIPModel

    torch.manual_seed(args.seed)
    kw = TINY if args.tiny else {}
    model = xclip.create_model(args.arch, num_frames=args.frames, **kw).eval()
    model.set_attn_backend("torch")
    model.save_pretrained(workdir)
    hf = XCLIPModel.from_pretrained(workdir, attn_implementation="sdpa").eval()
    cfg = model.config
    R = cfg.image_resolution
    video = torch.randn(args.videos, args.frames, 3, R, R, generator=torch.Generator().manual_seed(args.seed + 1))
    tk = Tokenizer()
    names = class_names(args.classes, args.labels, args.seed)
    tokens = tk(names)  # [K, 77], zero padding
    enc = hf_tokenizer(tk, workdir)(names, padding="longest", return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    untrimmed = _untrimmed(model)
    with torch.inference_mode():
        text32 = model.encode_text(tokens)
    info = dict(arch=args.arch if not args.tiny else "tiny", frames=args.frames, videos=args.videos,
                classes=args.classes, text_positions=text_length(tokens), hf_text_shape=list(ids.shape),
                labels=args.labels or "synthetic")
    cases = [
        Case("ours fp32", "video", lambda: model.logits_from_features(*model.encode_video(video), text32)),
        Case("hf fp32", "video", lambda: _hf_video_logits(hf, video, text32)),
        Case("ours fp32", "text", lambda: model.encode_text(tokens)),
        Case("hf fp32", "text", lambda: _hf_text(hf, ids, mask)),
    ]
    if args.untrimmed:
        cases.append(Case("ours fp32 untrimmed", "text", lambda: untrimmed(tokens)))
    if cpu_supports_bf16() or args.bf16 == "always":
        m16 = copy.deepcopy(model).to(torch.bfloat16)
        with torch.inference_mode():
            text16 = m16.encode_text(tokens)
        cases += [
            Case("ours bf16", "video", lambda: m16.logits_from_features(*m16.encode_video(video), text16)),
            Case("ours bf16", "text", lambda: m16.encode_text(tokens)),
        ]
        info["bf16"] = "native" if cpu_supports_bf16() else "emulated"
    else:
        info["bf16"] = "skipped: no native bf16 on this CPU (--bf16 always to run it anyway)"
    if args.compile:
        compiled = torch.compile(lambda v: model.logits_from_features(*model.encode_video(v), text32))
        t0 = time.perf_counter()
        with torch.inference_mode():
            compiled(video)
        info["compile_s"] = round(time.perf_counter() - t0, 1)
        cases.append(Case("ours fp32 compiled", "video", lambda: compiled(video)))
    return cases, info


def _untrimmed(model):
    """Our text tower on all L positions (the pre-trimming behaviour), for the record."""

    def run(tokens):
        L = tokens.shape[1]
        x = model.token_embedding(tokens) + model.positional_embedding[:L]
        x = model.ln_final(model.transformer(x))
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection

    return run


def run_rounds(cases: list[Case], rounds: int, warmup: int = 1, log=None) -> None:
    with torch.inference_mode():
        for c in cases:
            for _ in range(warmup):
                t0 = time.perf_counter()
                c.out = c.fn()
                if log:
                    log(f"warmup {c.group}: {c.name}: {time.perf_counter() - t0:.2f} s")
        for r in range(rounds):
            if log:
                log(f"round {r + 1}/{rounds}")
            k = r % len(cases)
            for c in cases[k:] + cases[:k]:  # rotate the order every round
                w0, c0 = time.perf_counter(), time.process_time()
                c.fn()
                c.cpu.append(time.process_time() - c0)
                c.wall.append(time.perf_counter() - w0)


def _paired(a: Case, b: Case, attr: str) -> float:
    """Median over rounds of b's time / a's time (> 1: a is faster)."""
    return statistics.median(y / x for x, y in zip(getattr(a, attr), getattr(b, attr)))


def report(cases: list[Case], info: dict) -> dict:
    by = {(c.group, c.name): c for c in cases}
    rows = {f"{c.group}: {c.name}": dict(wall_median_s=statistics.median(c.wall), wall_min_s=min(c.wall),
                                         cpu_median_s=statistics.median(c.cpu)) for c in cases}
    ratios = {}
    pairs = [("video fp32: ours vs hf (target >= 1.3)", ("video", "ours fp32"), ("video", "hf fp32")),
             ("text fp32: ours (trimmed) vs hf (longest padding) (target >= 1.0)", ("text", "ours fp32"),
              ("text", "hf fp32")),
             ("text fp32: trimmed vs untrimmed", ("text", "ours fp32"), ("text", "ours fp32 untrimmed")),
             ("video: ours bf16 vs ours fp32 (target >= 2)", ("video", "ours bf16"), ("video", "ours fp32")),
             ("text: ours bf16 vs ours fp32", ("text", "ours bf16"), ("text", "ours fp32")),
             ("video fp32: compiled vs eager", ("video", "ours fp32 compiled"), ("video", "ours fp32"))]
    for label, fast, slow in pairs:
        if fast in by and slow in by:
            ratios[label] = dict(wall=_paired(by[fast], by[slow], "wall"), cpu=_paired(by[fast], by[slow], "cpu"))
    agree = {}
    ref = by[("video", "ours fp32")].out.float()
    for (g, n), c in by.items():
        if g == "video" and n != "ours fp32":
            o = c.out.float()
            agree[f"video {n} vs ours fp32"] = dict(
                max_rel_err=float((o - ref).abs().max() / ref.abs().max()),
                top1_agreement=float((o.argmax(-1) == ref.argmax(-1)).float().mean()))
    tref = by[("text", "ours fp32")].out.float()
    for (g, n), c in by.items():
        if g == "text" and n != "ours fp32":
            o = c.out.float()
            agree[f"text {n} vs ours fp32"] = dict(max_rel_err=float((o - tref).abs().max() / tref.abs().max()))
    return dict(info=info, machine=_machine(), rounds=len(cases[0].wall), times=rows, ratios=ratios, agreement=agree)


def _machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return dict(cpu=cpu, logical_cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                native_bf16=cpu_supports_bf16(), loadavg=load)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="ViT-B/32")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--labels", help="a labels CSV (id,name), e.g. the official kinetics_400_labels.csv")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="tiny model sizes (a smoke run)")
    p.add_argument("--compile", action="store_true", help="also torch.compile our float32 video side")
    p.add_argument("--bf16", choices=["auto", "always"], default="auto",
                   help="auto: only where the CPU has native bf16")
    p.add_argument("--untrimmed", action="store_true", help="also time our text side on all 77 positions")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="xclip-bench-cpu-") as work:
        cases, info = build_cases(args, work)
        run_rounds(cases, args.rounds, args.warmup, log=lambda m: print(m, file=sys.stderr, flush=True))
    res = report(cases, info)
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


# --- pytest: the harness once, at tiny sizes (no time is asserted) -------------------------------------


def test_bench_cpu_tiny_runs_and_agrees(capsys):
    import pytest

    pytest.importorskip("transformers")
    args = argparse.Namespace(arch="ViT-B/32", frames=4, videos=2, classes=7, labels=None, rounds=1, warmup=1,
                              seed=0, tiny=True, compile=False, bf16="always", untrimmed=True, json=None)
    with tempfile.TemporaryDirectory() as work:
        cases, info = build_cases(args, work)
        run_rounds(cases, args.rounds, args.warmup)
    res = report(cases, info)
    assert info["text_positions"] < 77 and info["hf_text_shape"] == [7, info["text_positions"]]
    a = res["agreement"]
    assert a["video hf fp32 vs ours fp32"]["max_rel_err"] < 1e-5
    assert a["text hf fp32 vs ours fp32"]["max_rel_err"] < 1e-5
    assert a["text ours fp32 untrimmed vs ours fp32"]["max_rel_err"] < 1e-6
    assert a["video ours bf16 vs ours fp32"]["max_rel_err"] < 5e-2
    assert all(t["wall_median_s"] > 0 for t in res["times"].values())


if __name__ == "__main__":
    sys.exit(main())
