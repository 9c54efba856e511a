"""``xclip bench``: whole-model speed and memory, side by side on the same weights.

Contenders, all loaded from one set of random weights:

- ``ours[<backend>]``: this project's model, once per usable attention
  backend (``model.set_attn_backend``);
- ``plain``: the same architecture in plain PyTorch computed as the official
  code does (:mod:`xclip.model.reference`: nn.MultiheadAttention, message
  token concatenated);
- ``hf``: transformers' ``XCLIPModel`` loaded from ``model.save_pretrained``
  with its best attention implementation (flash_attention_2 when installed,
  else sdpa, else eager).

Per contender: inference throughput (views/s; videos/s = views/s divided by
the views per video of ``--views``), training-step time (forward + backward
+ AdamW step, text frozen and its features computed once, as the official
default ``FIX_TEXT``) and peak memory; ratios against ``plain`` and ``hf``;
model FLOP utilisation = (model FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode`` on our model) / time / (matrix
multiply rate measured on the same device in the same run, in the run's
dtype). Each contender's logits are compared with the reference model
(:mod:`xclip.model.reference`; float64 on the CPU, float32 on a GPU) on the
same input, so a fast wrong path shows up in the table; the ``plain`` row's
error is then the rounding error of the official computation in the run's
dtype, the yardstick for the others (which should stay within about twice it).

Precision: inference casts the weights to ``--dtype``; training keeps float32
weights under ``torch.autocast(--dtype)`` (the official recipe is mixed
precision, apex O1), with a GradScaler for float16 (``--train-precision pure``
casts the weights instead). On the CPU everything runs in float32 at the
sizes given; ``--tiny`` picks a tiny architecture so the whole harness runs
in seconds (the test suite does this).

Results: a rich table on stdout and, under ``--out`` (default ./bench_out),
``results.jsonl`` (appended as each measurement finishes, so a run cut short
keeps what it measured), ``results.json``, ``results.md`` and ``results.png``.
``xclip bench --report DIR`` rebuilds the table, Markdown and chart from a
``results.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["main", "BenchSettings", "run", "build_contenders", "TINY_ARCH"]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
CONTENDERS = ("ours", "plain", "hf", "hf-xk")

# A tiny X-CLIP for CPU tests: 4x4 patches of 8x8 pixels, two blocks per tower, head dim 32.
TINY_ARCH: dict[str, Any] = dict(
    embed_dim=64,
    image_resolution=32,
    vision_layers=2,
    vision_width=64,
    vision_patch_size=8,
    transformer_width=64,
    transformer_heads=2,
    transformer_layers=2,
    vision_heads=2,
    mit_heads=2,
    prompt_heads=2,
)


# --- settings -------------------------------------------------------------------


@dataclass
class BenchSettings:
    arch: str = "ViT-B/16"
    frames: int = 8
    batch: int = 32
    dtype: str = "bf16"
    compile: bool = False
    compile_backend: str = "inductor"
    cuda_graphs: bool = False
    classes: int = 400
    views: str = "1x1"
    warmup: int = 3
    iters: int = 10
    train_iters: int = 5
    infer: bool = True
    train: bool = True
    train_precision: str = "amp"
    contenders: tuple[str, ...] = CONTENDERS
    backends: tuple[str, ...] | None = None  # None: every usable one
    hf_attn: str = "auto"
    device: str = "auto"
    tiny: bool = False
    seed: int = 0
    strict: bool = False  # raise instead of recording a contender's error
    profile: bool = False

    def views_per_video(self) -> int:
        try:
            clips, crops = (int(v) for v in self.views.lower().split("x"))
        except ValueError:
            raise ValueError(f"--views must look like CLIPSxCROPS (e.g. 4x3), got {self.views!r}") from None
        if clips < 1 or crops < 1:
            raise ValueError(f"--views must have at least one clip and one crop, got {self.views!r}")
        return clips * crops

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        for name in ("frames", "batch", "classes", "iters", "train_iters"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"--warmup must be an integer >= 0, got {self.warmup!r}")
        if self.train_precision not in ("amp", "pure"):
            raise ValueError(f"--train-precision must be 'amp' or 'pure', got {self.train_precision!r}")
        bad = [c for c in self.contenders if c not in CONTENDERS]
        if bad or not self.contenders:
            raise ValueError(f"--contenders must be a non-empty subset of {list(CONTENDERS)}, got {list(self.contenders)}")
        if not (self.infer or self.train):
            raise ValueError("nothing to measure: both inference and training are switched off")
        self.views_per_video()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is visible")
    return dev


# --- contenders -----------------------------------------------------------------


def load_plain_module():
    """Deprecated: the plain model is :mod:`xclip.model.reference` (it was read from ``benchmarks/plain_xclip.py``)."""
    import warnings

    import xclip.model.reference as reference

    warnings.warn("xclip bench: load_plain_module() is deprecated; import xclip.model.reference", DeprecationWarning,
                  stacklevel=2)
    return reference


def _is_text_param(name: str) -> bool:
    """The official FIX_TEXT rule, in official key names: train only visual / mit / prompts."""
    return not ("visual." in name or "mit" in name or "prompts" in name)


def _is_hf_text_param(name: str) -> bool:
    """The same split in transformers' XCLIPModel names."""
    return not ("vision_model" in name or "visual_projection" in name or "mit" in name or "prompts" in name)


@dataclass
class Contender:
    """One implementation under test: a module, how to get text features, and the video -> logits step."""

    name: str
    module: nn.Module
    text_features: Callable[[Tensor], Tensor]
    video_logits: Callable[[Tensor, Tensor], Tensor]
    is_text_param: Callable[[str], bool]
    info: dict = field(default_factory=dict)


def _ours_model_config(s: BenchSettings) -> dict:
    kw: dict[str, Any] = dict(num_frames=s.frames)
    if s.tiny:
        kw.update(TINY_ARCH)
    return kw


def build_ours_model(s: BenchSettings) -> nn.Module:
    """Our model, randomly initialised (seeded): the source of every contender's weights."""
    from xclip.model import create_model

    torch.manual_seed(s.seed)
    kw = _ours_model_config(s)
    return create_model("ViT-B/16" if s.tiny else s.arch, **kw)


def _ours_contender(model: nn.Module, backend: str) -> Contender:
    model.set_attn_backend(backend)

    def text_features(tokens: Tensor) -> Tensor:
        return model.encode_text(tokens)

    def video_logits(video: Tensor, text: Tensor) -> Tensor:
        video_emb, patch_emb = model.encode_video(video)
        return model.logits_from_features(video_emb, patch_emb, text)

    return Contender(f"ours[{backend}]", model, text_features, video_logits, _is_text_param, {"backend": backend})


def plain_model(state_dict: dict, cfg) -> nn.Module:
    """The plain-PyTorch official-style model on ``state_dict``, with ``cfg``'s head counts and LayerNorm eps."""
    from xclip.model.reference import PlainXCLIP

    return PlainXCLIP.from_state_dict(state_dict, config=cfg)


def _plain_contender(state_dict: dict, cfg) -> Contender:
    model = plain_model(state_dict, cfg)
    return Contender("plain", model, model.encode_text, model.logits_from_video, _is_text_param)


def best_hf_attn(device: torch.device, dtype: torch.dtype) -> list[str]:
    """Attention implementations to try for transformers' XCLIPModel, best first."""
    order = []
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        try:
            from transformers.utils import is_flash_attn_2_available

            if is_flash_attn_2_available():
                order.append("flash_attention_2")
        except ImportError:
            pass
    return order + ["sdpa", "eager"]


def hf_video_logits(model: nn.Module, video: Tensor, text: Tensor) -> Tensor:
    """transformers' ``XCLIPModel.forward`` without its text tower: logits from cached text features
    ``text`` [K, E] (the official code caches them too)."""
    B, T = video.shape[:2]
    vis = model.vision_model(pixel_values=video.flatten(0, 1))
    cls = model.visual_projection(vis[1]).view(B, T, -1)
    video_emb = model.mit(cls)[1]
    img = model.prompts_visual_layernorm(vis[0][:, 1:, :]) @ model.prompts_visual_projection
    img = img.view(B, T, -1, video_emb.shape[-1]).mean(dim=1)
    t = text.unsqueeze(0).expand(B, -1, -1)
    t = t + model.prompts_generator(t, img)
    v = video_emb / video_emb.norm(p=2, dim=-1, keepdim=True)
    t = t / t.norm(p=2, dim=-1, keepdim=True)
    return torch.einsum("bd,bkd->bk", v, model.logit_scale.exp() * t)


def _hf_contender(hf_dir: str, device: torch.device, dtype: torch.dtype, requested: str,
                  patch: bool = False) -> Contender:
    """transformers' XCLIPModel; with ``patch``, its attentions run through our fused ops
    (``xclip_kernels.transformers.apply_to``): "transformers patched against transformers"."""
    from transformers import XCLIPModel

    impls = best_hf_attn(device, dtype) if requested == "auto" else [requested]
    errors = []
    model = None
    for impl in impls:
        try:
            model = XCLIPModel.from_pretrained(hf_dir, attn_implementation=impl)
            break
        except (ImportError, ValueError) as e:  # implementation not available here
            errors.append(f"{impl}: {e}")
    if model is None:
        raise ValueError("transformers' XCLIPModel could not be loaded with any attention implementation: " + "; ".join(errors))
    used = model.config._attn_implementation
    if patch:
        from xclip_kernels.transformers import apply_to

        apply_to(model)

    def text_features(tokens: Tensor) -> Tensor:
        out = model.get_text_features(input_ids=tokens)
        return out if isinstance(out, Tensor) else out.pooler_output

    def video_logits(video: Tensor, text: Tensor) -> Tensor:
        return hf_video_logits(model, video, text)

    return Contender(f"{'hf-xk' if patch else 'hf'}[{used}]", model, text_features, video_logits, _is_hf_text_param, {"attn_implementation": used})


def usable_backends(device: torch.device, requested: tuple[str, ...] | None) -> tuple[list[str], dict[str, str]]:
    """Our attention backends that can run on ``device`` (requested ones, or all usable), and why the others not."""
    import xclip_kernels as xk

    statuses = xk.available_backends()
    skipped: dict[str, str] = {}
    names = list(requested) if requested else list(xk.BACKEND_NAMES)
    out = []
    for name in names:
        st = statuses.get(name)
        if st is None:
            raise ValueError(f"--backends: unknown backend {name!r}; expected among {list(statuses)}")
        reason = None
        if not st.available:
            reason = st.reason
        else:
            dev_reason = xk.backends.BACKENDS[name].device_reason(device)
            if dev_reason:
                reason = dev_reason
        if reason is None:
            out.append(name)
        elif requested:
            raise ValueError(f"--backends: backend {name!r} cannot run on {device}: {reason}")
        else:
            skipped[name] = reason
    return out, skipped


# --- timing and memory --------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], warmup: int, iters: int, device: torch.device) -> list[float]:
    """Seconds per call, ``iters`` calls after ``warmup``; CUDA events on the GPU."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    if device.type == "cuda":
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, size: int | None = None, iters: int = 20) -> float:
    """Dense ``size``-cube matrix multiply rate on this device and dtype, TFLOP/s."""
    n = size or (8192 if device.type == "cuda" else 512)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    times = time_calls(lambda: torch.matmul(a, b, out=c), warmup=3, iters=iters, device=device)
    del a, b, c
    return 2 * n**3 / statistics.median(times) / 1e12


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class _PeakMemory:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: int | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            _sync(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        return False


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _oom_types() -> tuple[type, ...]:
    return (torch.cuda.OutOfMemoryError,) if hasattr(torch.cuda, "OutOfMemoryError") else ()


# --- inputs ----------------------------------------------------------------------------


def make_inputs(s: BenchSettings, cfg, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised-looking random video ``[B, T, 3, H, W]``, ``K`` token rows (eot the max id), labels ``[B]``."""
    g = torch.Generator().manual_seed(s.seed + 1)
    res = cfg.image_resolution
    video = torch.randn(s.batch, s.frames, 3, res, res, generator=g)
    L = cfg.context_length
    tokens = torch.zeros(s.classes, L, dtype=torch.long)
    vocab = cfg.vocab_size
    sot, eot = vocab - 2, vocab - 1
    for k in range(s.classes):
        n = 1 + int(torch.randint(0, min(12, L - 2), (1,), generator=g))
        tokens[k, 0] = sot
        tokens[k, 1 : 1 + n] = torch.randint(1, vocab - 2, (n,), generator=g)
        tokens[k, 1 + n] = eot
    labels = torch.randint(0, s.classes, (s.batch,), generator=g)
    return video.to(device), tokens.to(device), labels.to(device)


# --- one contender -------------------------------------------------------------------


def _maybe_compile(fn: Callable, s: BenchSettings, device: torch.device, for_graphs: bool) -> Callable:
    if not s.compile:
        return fn
    mode = "reduce-overhead" if for_graphs else None
    return torch.compile(fn, backend=s.compile_backend, mode=mode if s.compile_backend == "inductor" else None)


def _cuda_graph(fn: Callable[[Tensor], Tensor], example: Tensor, device: torch.device) -> Callable[[Tensor], Tensor]:
    """Capture ``fn`` on a static input once; each call copies the input in and replays."""
    static_in = example.clone()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(static_in)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(static_in)

    def replay(x: Tensor) -> Tensor:
        static_in.copy_(x)
        graph.replay()
        return static_out

    return replay


def bench_inference(c: Contender, s: BenchSettings, device, dtype, video, tokens) -> tuple[dict, Tensor]:
    module = c.module.to(device=device, dtype=dtype).eval()
    with torch.inference_mode():
        text = c.text_features(tokens)
    x = video.to(dtype)

    def step(v: Tensor) -> Tensor:
        return c.video_logits(v, text)

    use_graphs = s.cuda_graphs and device.type == "cuda"
    fn = _maybe_compile(step, s, device, for_graphs=use_graphs)
    rec: dict[str, Any] = {}
    with torch.inference_mode():
        if use_graphs and not s.compile:
            fn = _cuda_graph(fn, x, device)
        logits = fn(x).float().clone()  # first call: also compiles / captures
        with _PeakMemory(device) as mem:
            times = time_calls(lambda: fn(x), s.warmup, s.iters, device)
    t = statistics.median(times)
    rec.update(
        infer_s=t,
        infer_s_min=min(times),
        views_per_s=s.batch / t,
        videos_per_s=s.batch / t / s.views_per_video(),
        infer_peak_bytes=mem.peak,
        cuda_graphs=bool(use_graphs),
    )
    del module
    return rec, logits


def bench_training(c: Contender, s: BenchSettings, device, dtype, video, tokens, labels) -> dict:
    pure = s.train_precision == "pure" or device.type == "cpu"
    module = c.module.to(device=device, dtype=dtype if pure else torch.float32).train()
    for name, p in module.named_parameters():
        p.requires_grad_(not c.is_text_param(name))
    use_amp = not pure and dtype != torch.float32
    amp_dtype = dtype if use_amp else torch.bfloat16  # unused when disabled

    def amp():  # a fresh context each time (torch.compile traces its construction)
        return torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)

    with torch.no_grad(), amp():
        text = c.text_features(tokens)  # frozen text: computed once
    x = video.to(dtype if pure else torch.float32)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=8e-6, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.001)
    scaler = torch.amp.GradScaler(device.type, enabled=(not pure and dtype == torch.float16))

    def loss_fn(v: Tensor, y: Tensor) -> Tensor:
        with amp():
            logits = c.video_logits(v, text)
        return F.cross_entropy(logits.float(), y)

    loss_c = _maybe_compile(loss_fn, s, device, for_graphs=False)

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_c(x, labels)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    first = float(step().detach())  # compiles, allocates optimiser state; the loss before any update
    if not math.isfinite(first):
        raise FloatingPointError(f"{c.name}: training loss is {first}")
    with _PeakMemory(device) as mem:
        times = time_calls(step, s.warmup, s.train_iters, device)
    t = statistics.median(times)
    rec = dict(
        train_step_s=t,
        train_step_s_min=min(times),
        train_peak_bytes=mem.peak,
        train_precision="float32" if dtype == torch.float32 else ("pure" if pure else "amp"),
        trainable_params=sum(p.numel() for p in params),
        train_loss_first=first,
    )
    opt.zero_grad(set_to_none=True)
    del opt, params, module
    return rec


def profile_contender(c: Contender, s: BenchSettings, device, dtype, video, tokens, out_dir: Path) -> str:
    """One inference call under torch.profiler; the top ops table is written to ``out_dir``."""
    from torch.profiler import ProfilerActivity, profile

    c.module.to(device=device, dtype=dtype).eval()
    with torch.inference_mode():
        text = c.text_features(tokens)
        x = video.to(dtype)
        c.video_logits(x, text)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            c.video_logits(x, text)
            _sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=30)
    safe = c.name.replace("[", "_").replace("]", "").replace("/", "-")
    path = out_dir / f"profile_{_cfg_tag(s)}_{safe}.txt"
    path.write_text(table)
    return str(path)


# --- one configuration -------------------------------------------------------------------


def _cfg_tag(s: BenchSettings) -> str:
    arch = "tiny" if s.tiny else s.arch.replace("/", "").replace("@", "-")
    mode = ("compile" if s.compile else "eager") + ("+graphs" if s.cuda_graphs else "")
    return f"{arch}_T{s.frames}_B{s.batch}_{s.dtype}_{mode}"


def _environment(device: torch.device) -> dict:
    env = dict(
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        host=platform.node(),
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
    )
    for mod in ("triton", "transformers"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            env[mod] = None
    return env


def build_contenders(s: BenchSettings, device: torch.device, dtype: torch.dtype, workdir: str):
    """(reference model, config, list of (name, builder)) where each builder returns a fresh Contender."""
    ours = build_ours_model(s)
    cfg = ours.config
    state = {k: v.detach().clone() for k, v in ours.state_dict().items()}
    builders: list[tuple[str, Callable[[], Contender]]] = []
    skipped: dict[str, str] = {}
    if "ours" in s.contenders:
        backends, why_not = usable_backends(device, s.backends)
        skipped.update({f"ours[{b}]": r for b, r in why_not.items()})
        for b in backends:
            builders.append((f"ours[{b}]", lambda b=b: _ours_contender(_fresh_ours(s, state), b)))
    if "plain" in s.contenders:
        builders.append(("plain", lambda: _plain_contender(state, cfg)))
    if "hf" in s.contenders or "hf-xk" in s.contenders:
        hf_dir = os.path.join(workdir, "hf")
        ours.save_pretrained(hf_dir)
        for name in ("hf", "hf-xk"):
            if name in s.contenders:
                builders.append((name, lambda p=name == "hf-xk": _hf_contender(hf_dir, device, dtype, s.hf_attn, patch=p)))
    return ours, cfg, state, builders, skipped


def _fresh_ours(s: BenchSettings, state: dict) -> nn.Module:
    """Our model holding a private copy of ``state`` (built on meta: no second random initialisation)."""
    with torch.device("meta"):
        m = build_ours_model(s)
    m.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
    leftover = [n for n, t in list(m.named_parameters()) + list(m.named_buffers()) if t.is_meta]
    if leftover:  # a tensor not in the state dict (a non-persistent buffer): build it for real
        m = build_ours_model(s)
        m.load_state_dict(state)
    return m


def rel_err(a: Tensor, ref: Tensor) -> float:
    a, ref = a.double().cpu(), ref.double().cpu()
    if not torch.isfinite(a).all():
        return float("nan")
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def _append_jsonl(out_dir: Path, rec: dict) -> None:
    """Append one record to ``results.jsonl`` (as it finishes: a run cut short keeps what it measured)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.jsonl", "a") as f:
        f.write(json.dumps(_jsonable(rec)) + "\n")


def reference_dtype(device: torch.device) -> torch.dtype:
    """The reference model's dtype: float64 on the CPU (the oracle), float32 on a GPU (float64 is slow on most)."""
    return torch.float64 if device.type == "cpu" else torch.float32


def reference_outputs(state: dict, cfg, video: Tensor, tokens: Tensor, labels: Tensor,
                      device: torch.device) -> tuple[Tensor, float]:
    """Logits (on the CPU) and cross-entropy loss of the reference model (:mod:`xclip.model.reference`)."""
    dtype = reference_dtype(device)
    ref = plain_model(state, cfg).to(device=device, dtype=dtype).eval()
    with torch.inference_mode():
        logits = ref.logits_from_video(video.to(dtype), ref.encode_text(tokens))
        loss = float(F.cross_entropy(logits, labels))
    del ref
    return logits.cpu(), loss


def _run_dtype(s: BenchSettings, device: torch.device, console) -> torch.dtype:
    if s.cuda_graphs and device.type != "cuda":
        raise ValueError("--cuda-graphs needs a CUDA device")
    if device.type == "cpu" and s.dtype != "fp32":
        _say(console, f"[yellow]CPU run: measuring in float32 instead of {s.dtype}[/]")
    return DTYPES[s.dtype] if device.type == "cuda" else torch.float32


def _base_record(s: BenchSettings, device: torch.device, dtype: torch.dtype) -> dict:
    """The fields every record of one configuration shares."""
    return dict(
        arch="tiny" if s.tiny else s.arch,
        frames=s.frames,
        batch=s.batch,
        classes=s.classes,
        views=s.views,
        dtype=str(dtype).replace("torch.", ""),
        mode=("compile" if s.compile else "eager") + ("+cuda-graphs" if s.cuda_graphs and device.type == "cuda" else ""),
        env=_environment(device),
        ref_dtype=str(reference_dtype(device)).replace("torch.", ""),
        matmul_tflops=measure_matmul_tflops(device, dtype),
    )


def _error_status(e: BaseException) -> str:
    oom = isinstance(e, _oom_types()) or "out of memory" in str(e).lower()
    return ("OOM: " if oom else f"error: {type(e).__name__}: ") + str(e).splitlines()[0][:300]


def measure_contender(build: Callable[[], Contender], s: BenchSettings, device, dtype, inputs: tuple,
                      base: dict, ref_logits: Tensor, out_dir: Path) -> dict:
    """One contender's record: inference (and its error against the reference), profile, training step."""
    video, tokens, labels = inputs
    matmul = base["matmul_tflops"] * 1e12
    c = build()
    rec: dict[str, Any] = {**base, "contender": c.name, "status": "ok", **c.info}
    if s.infer:
        r, logits = bench_inference(c, s, device, dtype, video, tokens)
        rec.update(r)
        rec["max_rel_err_vs_ref"] = rel_err(logits, ref_logits)
        rec["infer_mfu"] = base["flops_infer"] / rec["infer_s"] / matmul
    if s.profile:
        rec["profile"] = profile_contender(c, s, device, dtype, video, tokens, out_dir)
    if s.train:
        c = build()  # fresh float32 weights for training
        rec.update(bench_training(c, s, device, dtype, video, tokens, labels))
        rec["train_mfu"] = base["flops_train"] / rec["train_step_s"] / matmul
    return rec


def run_config(s: BenchSettings, out_dir: Path, console=None) -> list[dict]:
    """Every contender on one (arch, frames, batch, dtype, mode); returns one record per contender."""
    s.validate()
    device = resolve_device(s.device)
    dtype = _run_dtype(s, device, console)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = _base_record(s, device, dtype)
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="xclip-bench-") as work:
        torch.manual_seed(s.seed)
        ours, cfg, state, builders, skipped = build_contenders(s, device, dtype, work)
        inputs = make_inputs(s, cfg, device)
        del ours
        ref_logits, base["ref_loss"] = reference_outputs(state, cfg, *inputs, device)
        base["flops_infer"], base["flops_train"] = _model_flops(s)  # counted on our model
        base["flops_infer_analytic"] = analytic_infer_flops(cfg, s.batch, s.frames, s.classes)
        _free(device)
        for name, why in skipped.items():
            records.append({**base, "contender": name, "status": f"skipped: {why}"})
            _append_jsonl(out_dir, records[-1])
        for name, build in builders:
            try:
                rec = measure_contender(build, s, device, dtype, inputs, base, ref_logits, out_dir)
            except Exception as e:  # noqa: BLE001  (an OOM or a failing path is a result, not the end of the run)
                if s.strict:
                    raise
                rec = {**base, "contender": name, "status": _error_status(e), "traceback": traceback.format_exc(limit=8)}
            finally:
                _free(device)
                if s.compile:
                    torch._dynamo.reset()
            records.append(rec)
            _append_jsonl(out_dir, rec)
            _say(console, _escape(f"  {rec['contender']:<22} {rec['status']}"))
    _add_ratios(records)
    return records


def analytic_infer_flops(cfg, batch: int, frames: int, classes: int) -> int:
    """Matrix-multiply FLOPs of one inference call (text cached) of X-CLIP, by hand.

    Counts what our model executes: the frame attention's queries are the N
    patch tokens only (the message token is a key / value, never a query), and
    the first prompt layer projects the K shared class queries once, not once
    per video. Elementwise work (LayerNorm, GELU, softmax, residuals) is not
    counted, as ``FlopCounterMode`` does not count it either.
    """
    B, T, K = batch, frames, classes
    Fr = B * T
    W, E, p, g = cfg.vision_width, cfg.embed_dim, cfg.vision_patch_size, cfg.grid_size
    P = g * g  # patch tokens
    N = P + 1  # plus the class token
    r = cfg.mlp_ratio
    f = 2 * Fr * P * 3 * p * p * W  # patch embedding (conv)
    per_layer = (
        2 * Fr * W * W  # message_fc
        + 2 * Fr * 3 * W * W + 4 * B * T * T * W + 2 * Fr * W * W  # message attention across frames
        + 2 * Fr * N * 3 * W * W + 2 * Fr * 2 * W * W  # q/k/v of the tokens, k/v of the message
        + 4 * Fr * N * (N + 1) * W + 2 * Fr * N * W * W  # attention over N + 1 keys, output projection
        + 4 * r * Fr * N * W * W  # MLP
    )
    f += cfg.vision_layers * per_layer
    f += 2 * Fr * W * E + 2 * Fr * P * W * E  # class projection, prompts_visual_proj
    f += cfg.mit_layers * B * (2 * T * 3 * E * E + 4 * T * T * E + 2 * T * E * E + 4 * r * T * E * E)
    for i in range(cfg.prompt_layers):
        q_rows = K if i == 0 else B * K  # the shared class queries are projected once
        f += 2 * q_rows * E * E + 2 * B * P * 2 * E * E + 4 * B * K * P * E + 2 * B * K * E * E + 4 * r * B * K * E * E
    f += 2 * B * K * E  # cosine logits
    return int(f)


def _model_flops(s: BenchSettings) -> tuple[int, int]:
    """FLOPs of one inference call (text cached) and of one training forward + backward, on our model.

    Counted by ``FlopCounterMode`` on the ``meta`` device (shapes only: no memory, no time; our ops'
    fake kernels and FLOP formulas make this exact), so it works at sizes that would not fit twice.
    """
    with torch.device("meta"):
        model = build_ours_model(s)
    model.set_attn_backend("torch")
    cfg = model.config
    res = cfg.image_resolution
    video = torch.empty(s.batch, s.frames, 3, res, res, device="meta")
    text = torch.empty(s.classes, cfg.embed_dim, device="meta")
    labels = torch.zeros(s.batch, dtype=torch.long, device="meta")

    def infer():
        with torch.no_grad():
            v, p = model.encode_video(video)
            model.logits_from_features(v, p, text)

    def train():
        v, p = model.encode_video(video)
        F.cross_entropy(model.logits_from_features(v, p, text).float(), labels).backward()

    return count_flops(infer), count_flops(train)


def _add_ratios(records: list[dict]) -> None:
    """Speed-ups of every contender over ``plain`` and over ``hf`` (>1 means faster), and memory ratios."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(_group_key(r), []).append(r)
    for rs in groups.values():
        plain = next((r for r in rs if r["contender"] == "plain" and r.get("status") == "ok"), None)
        hf = next((r for r in rs if r["contender"].startswith("hf[") and r.get("status") == "ok"), None)
        for r in rs:
            for ref, tag in ((plain, "plain"), (hf, "hf")):
                if ref is None or r.get("status") != "ok":
                    continue
                if r.get("infer_s") and ref.get("infer_s"):
                    r[f"infer_speedup_vs_{tag}"] = ref["infer_s"] / r["infer_s"]
                if r.get("train_step_s") and ref.get("train_step_s"):
                    r[f"train_speedup_vs_{tag}"] = ref["train_step_s"] / r["train_step_s"]
                if r.get("train_peak_bytes") and ref.get("train_peak_bytes"):
                    r[f"train_mem_vs_{tag}"] = r["train_peak_bytes"] / ref["train_peak_bytes"]


def _group_key(r: dict) -> tuple:
    return (r.get("arch"), r.get("frames"), r.get("batch"), r.get("dtype"), r.get("mode"), r.get("classes"))


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


# --- reporting ----------------------------------------------------------------------------


def _fmt(v, spec: str = ".1f", scale: float = 1.0, suffix: str = "") -> str:
    if v is None or isinstance(v, str):
        return "-" if v is None else v
    return f"{v * scale:{spec}}{suffix}"


def _mem(v) -> str:
    return "n/a" if v is None else f"{v / 2**30:.2f} GiB"


COLUMNS = [
    ("config", lambda r: f"{r['arch']} T={r['frames']} B={r['batch']} {r['dtype']} {r['mode']}"),
    ("contender", lambda r: r["contender"]),
    ("views/s", lambda r: _fmt(r.get("views_per_s"))),
    ("videos/s", lambda r: _fmt(r.get("videos_per_s"))),
    ("infer x plain", lambda r: _fmt(r.get("infer_speedup_vs_plain"), ".2f", suffix="x")),
    ("infer x hf", lambda r: _fmt(r.get("infer_speedup_vs_hf"), ".2f", suffix="x")),
    ("infer MFU", lambda r: _fmt(r.get("infer_mfu"), ".1f", 100, "%")),
    ("infer mem", lambda r: _mem(r.get("infer_peak_bytes")) if r.get("status") == "ok" else "-"),
    ("train ms", lambda r: _fmt(r.get("train_step_s"), ".1f", 1e3)),
    ("train x plain", lambda r: _fmt(r.get("train_speedup_vs_plain"), ".2f", suffix="x")),
    ("train x hf", lambda r: _fmt(r.get("train_speedup_vs_hf"), ".2f", suffix="x")),
    ("train MFU", lambda r: _fmt(r.get("train_mfu"), ".1f", 100, "%")),
    ("train mem", lambda r: _mem(r.get("train_peak_bytes")) if r.get("status") == "ok" else "-"),
    ("mem / plain", lambda r: _fmt(r.get("train_mem_vs_plain"), ".2f", suffix="x")),
    ("rel err", lambda r: _fmt(r.get("max_rel_err_vs_ref", r.get("max_rel_err_vs_plain_fp32")), ".1e")),
    ("status", lambda r: r.get("status", "")),
]


def _rows(records: list[dict]) -> list[list[str]]:
    return [[fn(r) for _, fn in COLUMNS] for r in records]


def markdown_table(records: list[dict]) -> str:
    head = [name for name, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in _rows(records)]
    return "\n".join(lines)


def write_markdown(records: list[dict], path: Path) -> None:
    envs = {json.dumps(r.get("env", {}), sort_keys=True) for r in records}
    parts = ["# xclip bench results", ""]
    for e in sorted(envs):
        env = json.loads(e)
        parts.append("Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    rates = sorted({(r["dtype"], float(f"{r['matmul_tflops']:.3g}")) for r in records if "matmul_tflops" in r})
    if rates:
        parts.append("Measured matrix-multiply rate (same run): " + ", ".join(f"{d} {t:g} TFLOP/s" for d, t in rates))
    parts += [
        "",
        "views/s: one view = one clip of T frames; videos/s = views/s / views per video (`--views`). "
        "Training: forward + backward + AdamW step, text frozen and cached. "
        "MFU: model FLOPs (FlopCounterMode on our model) / time / measured matmul rate. "
        "`x plain` / `x hf`: speed-up over that contender (>1 is faster). "
        "rel err: max |logits - reference logits| / max |reference logits|, the reference being the plain "
        "official-style model (xclip.model.reference) in float64 on the CPU, float32 on a GPU; the plain row's "
        "error is its own rounding error in the run's dtype, the yardstick for the others.",
        "",
        markdown_table(records),
        "",
    ]
    path.write_text("\n".join(parts))


def write_chart(records: list[dict], path: Path) -> bool:
    ok = [r for r in records if r.get("status") == "ok" and r.get("views_per_s")]
    if not ok:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict]] = {}
    for r in ok:
        groups.setdefault(f"{r['arch']} T{r['frames']} {r['dtype']} {r['mode']}", []).append(r)
    names = sorted({r["contender"] for r in ok})
    has_train = any(r.get("train_step_s") for r in ok)
    fig, axes = plt.subplots(1, 2 if has_train else 1, figsize=(max(8, 1.6 * len(groups) * (2 if has_train else 1)), 4.5))
    axes = list(axes) if has_train else [axes]
    width = 0.8 / max(1, len(names))
    for ax, key, label in zip(
        axes,
        ("views_per_s", "train_views_per_s"),
        ("inference views/s (higher is better)", "training views/s (higher is better)"),
    ):
        for i, n in enumerate(names):
            vals = []
            for g in groups.values():
                r = next((x for x in g if x["contender"] == n), None)
                if r is None:
                    vals.append(0.0)
                elif key == "views_per_s":
                    vals.append(r.get("views_per_s") or 0.0)
                else:
                    vals.append(r["batch"] / r["train_step_s"] if r.get("train_step_s") else 0.0)
            ax.bar([j + i * width for j in range(len(groups))], vals, width, label=n)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
        ax.set_xticklabels(list(groups), rotation=20, ha="right", fontsize=8)
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def print_table(records: list[dict], console=None) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency of the dev setup
        print(markdown_table(records))
        return
    console = console or Console(width=250)
    table = Table(title="xclip bench", show_lines=False)
    for name, _ in COLUMNS:
        table.add_column(name, overflow="fold")
    from rich.markup import escape

    for row in _rows(records):
        table.add_row(*(escape(c) for c in row))
    console.print(table)


def write_outputs(records: list[dict], out_dir: Path) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md", "png": out_dir / "results.png"}
    paths["json"].write_text(json.dumps(_jsonable(records), indent=1))
    write_markdown(records, paths["md"])
    if not write_chart(records, paths["png"]):
        paths.pop("png")
    return {k: str(v) for k, v in paths.items()}


def read_jsonl(path: Path) -> list[dict]:
    records = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            records.append(json.loads(line))
    return records


def _escape(msg: str) -> str:
    try:
        from rich.markup import escape
    except ImportError:  # pragma: no cover
        return msg
    return escape(msg)


def _say(console, msg: str) -> None:
    if console is not None:
        console.print(msg)
    else:
        print(msg)


# --- the whole run -------------------------------------------------------------------------


def run(
    settings: BenchSettings,
    archs: list[str] | None = None,
    frames: list[int] | None = None,
    dtypes: list[str] | None = None,
    modes: list[str] | None = None,
    out_dir: str | Path = "bench_out",
    console=None,
) -> list[dict]:
    """Every combination of archs x frames x dtypes x modes; returns all records and writes the outputs."""
    out = Path(out_dir)
    records: list[dict] = []
    grid = itertools.product(archs or [settings.arch], frames or [settings.frames], dtypes or [settings.dtype],
                             modes or ["compile" if settings.compile else "eager"])
    for arch, t, d, m in grid:
        if m not in ("eager", "compile"):
            raise ValueError(f"--modes: expected 'eager' and/or 'compile', got {m!r}")
        s = dataclasses.replace(settings, arch=arch, frames=t, dtype=d, compile=(m == "compile"))
        _say(console, f"[bold]{_cfg_tag(s)}[/]")
        try:
            records += run_config(s, out, console)
        except ValueError:
            raise  # bad arguments: stop
        except Exception as e:  # noqa: BLE001  (e.g. out of memory building the reference: next config)
            if s.strict:
                raise
            rec = {"arch": arch, "frames": t, "batch": s.batch, "classes": s.classes, "views": s.views, "dtype": d,
                   "mode": m, "contender": "(all)", "status": _error_status(e),
                   "traceback": traceback.format_exc(limit=8)}
            records.append(rec)
            _append_jsonl(out, rec)
            _say(console, _escape(f"  {rec['status']}"))
            _free(resolve_device(s.device))
    _add_ratios(records)
    write_outputs(records, out)
    return records


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="xclip bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", default=["ViT-B/16"], help="one or more of ViT-B/32 ViT-B/16 ViT-L/14 ViT-L/14@336")
    p.add_argument("--frames", nargs="+", type=int, default=[8])
    p.add_argument("--batch", type=int, default=32, help="views per batch")
    p.add_argument("--dtype", nargs="+", default=["bf16"], choices=list(DTYPES))
    p.add_argument("--compile", action="store_true", help="torch.compile every contender (same as --modes compile)")
    p.add_argument("--modes", nargs="+", choices=["eager", "compile"], help="run each configuration in these modes")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--cuda-graphs", action="store_true", help="CUDA graphs for inference (compile: mode reduce-overhead)")
    p.add_argument("--classes", type=int, default=400, help="class prompts K (Kinetics-400: 400)")
    p.add_argument("--views", default="1x1", help="CLIPSxCROPS per video for videos/s (the paper's K400 test: 4x3)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10, help="timed inference calls")
    p.add_argument("--train-iters", type=int, default=5, help="timed training steps")
    p.add_argument("--no-infer", action="store_true")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--train-precision", choices=["amp", "pure"], default="amp")
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    p.add_argument("--backends", nargs="+", help="our attention backends (default: every usable one)")
    p.add_argument("--hf-attn", default="auto", help="transformers attn_implementation (default: best available)")
    p.add_argument("--device", default="auto")
    p.add_argument("--tiny", action="store_true", help="a tiny architecture (CPU tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="stop at the first failing contender")
    p.add_argument("--profile", action="store_true", help="write a torch.profiler table per contender")
    p.add_argument("--out", default="bench_out", help="output folder (results.jsonl/json/md/png)")
    p.add_argument("--report", metavar="DIR", help="only rebuild the table / Markdown / chart from DIR/results.jsonl")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        from rich.console import Console

        console = Console(width=250)
    except ImportError:  # pragma: no cover
        console = None
    if args.report:
        path = Path(args.report) / "results.jsonl"
        if not path.is_file():
            raise SystemExit(f"xclip bench --report: {path} does not exist")
        records = read_jsonl(path)
        _add_ratios(records)
        paths = write_outputs(records, Path(args.report))
        print_table(records, console)
        _say(console, "wrote " + ", ".join(paths.values()))
        return 0
    settings = BenchSettings(
        arch=args.arch[0],
        frames=args.frames[0],
        batch=args.batch,
        dtype=args.dtype[0],
        compile=args.compile,
        compile_backend=args.compile_backend,
        cuda_graphs=args.cuda_graphs,
        classes=args.classes,
        views=args.views,
        warmup=args.warmup,
        iters=args.iters,
        train_iters=args.train_iters,
        infer=not args.no_infer,
        train=not args.no_train,
        train_precision=args.train_precision,
        contenders=tuple(args.contenders),
        backends=tuple(args.backends) if args.backends else None,
        hf_attn=args.hf_attn,
        device=args.device,
        tiny=args.tiny,
        seed=args.seed,
        strict=args.strict,
        profile=args.profile,
    )
    settings.validate()
    records = run(settings, args.arch, args.frames, args.dtype, args.modes, args.out, console)
    print_table(records, console)
    _say(console, f"wrote results under {args.out}")
    return 0 if all(r.get("status", "ok") == "ok" or r["status"].startswith("skipped") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
