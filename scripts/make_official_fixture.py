"""Write tests/model/fixtures/official_xclip_tiny.pth by RUNNING the official X-CLIP code (microsoft/VideoX).

The fixture proves compatibility with the official implementation, not with
our own re-statement of it: a tiny random X-CLIP is built by the official
``models.xclip.XCLIP`` class, saved exactly as the official trainer's
``utils.tools.epoch_saving`` does (``{"model": state_dict, "optimizer": ...,
"lr_scheduler": ..., "max_accuracy": ..., "epoch": ..., "config": <yacs
CfgNode>}``), and its logits on fixed inputs are computed by the official
forward. ``tests/model/test_official_fixture.py`` loads the file with
``xclip.load_pretrained`` while ``yacs`` cannot be imported and matches the
logits.

The official code is imported from a checkout given on the command line; none
of it is copied into this repository.

Sizes: every width is 128, so the official head rule (``width // 64``) gives 2
heads in the vision tower, message attention, MIT, prompt generator and text
tower (a transposed head split is visible). One layer per tower and in the
MIT and prompt generator, 3 frames of 16x16 pixels in 4x4 patches, a 64-token vocabulary and a
context of 8. All parameters are perturbed (LayerNorm and biases included) so
that every weight changes the logits, then rounded to float16 and stored as
float16 (keeps the file under 2 MB); the official logits are computed from
exactly those rounded weights in float64 and in float32.

Regenerate (needs network access once, for the official code and yacs/einops)::

    git clone https://github.com/microsoft/VideoX /tmp/VideoX     # X-CLIP/ at commit 1744b21 was used
    python -m venv --system-site-packages /tmp/fixture-venv        # or: pip install -e '.[fixture]'
    /tmp/fixture-venv/bin/pip install yacs einops timm
    /tmp/fixture-venv/bin/python scripts/make_official_fixture.py /tmp/VideoX/X-CLIP

(``timm`` and ``torch`` are the official code's other imports; ``apex`` is only
needed by its trainer, which is not imported.) The script prints the sizes of
the files it wrote and the float32-vs-float64 error of the official logits.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "model" / "fixtures"

SIZES = dict(embed_dim=128, image_resolution=16, vision_layers=1, vision_width=128, vision_patch_size=4,
             context_length=8, vocab_size=64, transformer_width=128, transformer_heads=2, transformer_layers=1)
FRAMES, MIT_LAYERS, PROMPT_LAYERS, PROMPT_ALPHA, DROP_PATH = 3, 1, 1, 0.1, 0.1


def _import_official(root: Path):
    if not (root / "models" / "xclip.py").is_file():
        raise SystemExit(f"{root}: not the official X-CLIP folder (no models/xclip.py); pass .../VideoX/X-CLIP")
    sys.path.insert(0, str(root))
    os.chdir(root)  # the official modules append "../" to sys.path and import `clip` by name
    import clip  # noqa: F401  (imported first: models.xclip <-> clip.clip import each other)
    from models.xclip import XCLIP
    from utils.config import _C

    return XCLIP, _C


def tokens(K: int = 3, L: int = 8, vocab: int = 64, seed: int = 1) -> torch.Tensor:
    """CLIP-style token rows: <sot> = vocab - 2, words, <eot> = vocab - 1 (the row's largest id), zero padding."""
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(K, L, dtype=torch.long)
    for i in range(K):
        n = 2 + i  # words per row: <eot> lands at different positions
        t[i, 0] = vocab - 2
        t[i, 1:1 + n] = torch.randint(1, vocab - 2, (n,), generator=g)
        t[i, 1 + n] = vocab - 1
    return t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("official", type=Path, help="the X-CLIP folder of a microsoft/VideoX checkout")
    ap.add_argument("--out", type=Path, default=FIXTURES, help="output folder (default: tests/model/fixtures)")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    XCLIP, _C = _import_official(args.official.resolve())

    config = _C.clone()  # the official defaults, then what this run changes, as its trainer would merge a yaml
    config.defrost()
    config.DATA.NUM_FRAMES = FRAMES
    config.DATA.INPUT_SIZE = SIZES["image_resolution"]
    config.DATA.NUM_CLASSES = 3
    config.MODEL.DROP_PATH_RATE = DROP_PATH
    config.MODEL.FIX_TEXT = True
    config.OUTPUT = "fixture"
    config.freeze()

    torch.manual_seed(0)
    model = XCLIP(**SIZES, T=FRAMES, droppath=DROP_PATH, mit_layers=MIT_LAYERS, prompts_alpha=PROMPT_ALPHA,
                  prompts_layers=PROMPT_LAYERS, use_cache=False, use_checkpoint=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "prompts_generator.alpha":
                p.copy_(0.5 + 0.1 * torch.randn_like(p))  # make the prompts move the logits clearly
            elif name != "logit_scale":
                p.add_(0.05 * torch.randn_like(p))
            p.copy_(p.half().float())  # the stored float16 weights are exactly the ones run below
    model.eval()

    g = torch.Generator().manual_seed(2)
    video = torch.randn(2, FRAMES, 3, SIZES["image_resolution"], SIZES["image_resolution"], generator=g,
                        dtype=torch.float64)
    text = tokens(vocab=SIZES["vocab_size"], L=SIZES["context_length"])
    with torch.no_grad():
        logits64 = model.double()(video, text)
        logits32 = model.float()(video.float(), text)
    err32 = float((logits32.double() - logits64).abs().max())

    optimizer = torch.optim.AdamW(model.parameters(), lr=8e-6, weight_decay=0.001)  # as build_optimizer's adamw
    state = {"model": {k: v.half() for k, v in model.state_dict().items()},
             "optimizer": optimizer.state_dict(),
             "lr_scheduler": {},
             "max_accuracy": 0.0,
             "epoch": 0,
             "config": config}
    out.mkdir(parents=True, exist_ok=True)
    ckpt, io = out / "official_xclip_tiny.pth", out / "official_xclip_tiny_io.pt"
    torch.save(state, ckpt)
    torch.save({"video": video, "tokens": text, "logits_float64": logits64, "logits_float32": logits32,
                "official_commit": _official_commit(args.official)}, io)
    print(f"wrote {ckpt} ({ckpt.stat().st_size / 1e6:.2f} MB) and {io} ({io.stat().st_size / 1e3:.1f} kB)")
    print(f"official logits (float64): {logits64.tolist()}")
    print(f"official float32 - float64 max abs error: {err32:.3g}")
    return 0


def _official_commit(root: Path) -> str:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return os.environ.get("XCLIP_OFFICIAL_COMMIT", "unknown")


if __name__ == "__main__":
    sys.exit(main())
