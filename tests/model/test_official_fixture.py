"""Compatibility with the official X-CLIP code, not with our own re-statement of it.

tests/model/fixtures/official_xclip_tiny.pth was written by running microsoft/VideoX's X-CLIP
(scripts/make_official_fixture.py): a tiny random model with 2 heads in every attention, saved as the
official trainer saves (with its real yacs config), plus fixed inputs and the official logits in float64
and float32 (tests/model/fixtures/official_xclip_tiny_io.pt). Here it is loaded while yacs cannot be imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import xclip
from xclip.model.checkpoints import load_checkpoint_file

FIX = Path(__file__).parent / "fixtures"
CKPT, IO = FIX / "official_xclip_tiny.pth", FIX / "official_xclip_tiny_io.pt"


@pytest.fixture
def no_yacs(monkeypatch):
    monkeypatch.setitem(sys.modules, "yacs", None)  # `import yacs` now raises ImportError
    monkeypatch.setitem(sys.modules, "yacs.config", None)
    with pytest.raises(ImportError):
        import yacs.config  # noqa: F401


@pytest.fixture(scope="module")
def io():
    return torch.load(IO, weights_only=True)


def _logits(m, io, dtype):
    with torch.no_grad():
        return m.to(dtype)(io["video"].to(dtype), io["tokens"]).double()


def test_fixture_is_small_and_official():
    assert CKPT.stat().st_size < 2_000_000 and IO.stat().st_size < 100_000
    raw = load_checkpoint_file(CKPT)
    assert set(raw) == {"model", "optimizer", "lr_scheduler", "max_accuracy", "epoch", "config"}
    assert type(raw["config"]).__name__ == "CfgNodeStandIn"  # the pickle holds a real yacs.config.CfgNode
    assert raw["config"]["DATA"]["NUM_FRAMES"] == 3 and raw["config"]["MODEL"]["DROP_PATH_RATE"] == 0.1


def test_official_fixture_loads_without_yacs_and_matches_official_logits(no_yacs, io):
    m = xclip.load_pretrained(CKPT).set_attn_backend("torch").eval()
    c = m.config
    assert (c.num_frames, c.vision_num_heads, c.mit_num_heads, c.prompt_num_heads, c.transformer_heads) == (3, 2, 2, 2, 2)
    assert (c.vocab_size, c.context_length, c.prompt_layers, c.mit_layers) == (64, 8, 1, 1)
    assert c.drop_path == 0.1 and c.freeze_text  # from the yacs config, not the weights

    ref64, ref32 = io["logits_float64"], io["logits_float32"]
    # float64: both sides run the same float16-exact weights; only float64 rounding separates them
    err64 = float((_logits(m, io, torch.float64) - ref64).abs().max())
    tol64 = 1e-10
    assert err64 <= tol64, f"float64 logits differ from the official ones by {err64:.3g}"
    # float32: flash-attention's rule, twice the official float32 code's own error plus a small atol
    eager32 = float((ref32.double() - ref64).abs().max())
    err32 = float((_logits(m, io, torch.float32) - ref64).abs().max())
    assert err32 <= 2 * eager32 + 1e-6, f"float32 error {err32:.3g} vs official float32 error {eager32:.3g}"

    # the float64 tolerance sees each X-CLIP component: removing one moves the logits far beyond it
    m = m.double()
    for name in ("prompts_generator.alpha", "visual.transformer.resblocks.0.message_attn.out_proj.weight",
                 "mit.resblocks.0.attn.out_proj.weight", "prompts_generator.decoder.0.cross_attn.proj.weight"):
        p = dict(m.named_parameters())[name]
        saved = p.detach().clone()
        with torch.no_grad():
            p.zero_()
        moved = float((_logits(m, io, torch.float64) - ref64).abs().max())
        with torch.no_grad():
            p.copy_(saved)
        assert moved > 1e4 * tol64, f"zeroing {name} moves the logits by only {moved:.3g}"
