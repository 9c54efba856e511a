"""xclip.tokenize: our CLIP BPE implementation, checked token for token against open_clip's."""

from __future__ import annotations

import pytest
import torch

import xclip
from xclip.model.tokenizer import EOT, SOT, Tokenizer

TEXTS = [
    "riding a bike",
    "eating spaghetti",
    "",
    "   Playing   the VIOLIN!!  ",
    "don't stop: it's 3:45pm, we'll've gone",
    "café crème brûlée naïve – “quotes” — 日本語のテキスト 😀👍",
    "&amp; html &lt;escaped&gt; text",
    "abseiling, air drumming, answering questions, applauding, applying cream, archery",
    "x" * 300,
    "numbers 1234567 and 3.14159",
]


def test_matches_open_clip_token_for_token():
    open_clip = pytest.importorskip("open_clip")
    ref = open_clip.get_tokenizer("ViT-B-32")
    ours = xclip.tokenize(TEXTS)
    theirs = ref(TEXTS)
    assert ours.dtype == torch.long and ours.shape == (len(TEXTS), 77)
    for i, text in enumerate(TEXTS):
        assert ours[i].tolist() == theirs[i].tolist(), text


def test_layout_and_truncation():
    t = xclip.tokenize(["riding a bike", "word " * 200])
    assert t[0, 0] == SOT == 49406
    n = int((t[0] != 0).sum())
    assert t[0, n - 1] == EOT == 49407 and (t[0, n:] == 0).all()
    assert t[0].argmax() == n - 1  # the model pools at argmax: <eot>
    assert (t[1] != 0).all() and t[1, -1] == EOT and t[1, 0] == SOT  # truncated, <eot> kept last
    assert xclip.tokenize("one string").shape == (1, 77)
    assert xclip.tokenize(["a", "b"], context_length=16).shape == (2, 16)


def test_encode_decode_roundtrip():
    tok = Tokenizer()
    text = "a person is playing the guitar badly in winter ☃"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(tok.encoder) == 49408


def test_special_strings_map_to_special_ids():
    t = xclip.tokenize("<|startoftext|> hi <|endoftext|>")[0]
    assert t[:5].tolist()[:2] == [SOT, SOT] and t[3] == EOT and t[4] == EOT


def test_bad_input():
    with pytest.raises(ValueError, match="strings"):
        xclip.tokenize(["ok", 3])
    with pytest.raises(ValueError, match="context_length"):
        xclip.tokenize(["ok"], context_length=1)
