"""CLIP's byte-level BPE tokenizer, written for this project.

The vocabulary is CLIP's ``bpe_simple_vocab_16e6.txt.gz`` (a list of BPE
merges). We read it from the installed ``open_clip`` package so nothing is
downloaded at run time; the file can also be given explicitly (argument or
``XCLIP_BPE_VOCAB``). The tokenizer itself (byte-to-symbol table, merge loop,
text cleaning, truncation) is our own code, so the model does not depend on
open_clip's tokenizer API, which has changed between releases; the tests check
it token for token against open_clip's.

Ids: 256 byte symbols (ordered by their symbol's code point), the same 256 with the end-of-word marker ``</w>``, one id
per merge (48,894), then ``<|startoftext|>`` = 49406 and ``<|endoftext|>`` = 49407.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
from pathlib import Path
from typing import Iterable

import torch

__all__ = ["Tokenizer", "tokenize", "default_vocab_path", "SOT", "EOT"]

SOT = 49406
EOT = 49407
_NUM_MERGES = 49152 - 256 - 2
_EOW = "</w>"


def default_vocab_path() -> Path:
    env = os.environ.get("XCLIP_BPE_VOCAB")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "CLIP BPE vocabulary not found: install open_clip_torch (it ships bpe_simple_vocab_16e6.txt.gz) "
            "or set XCLIP_BPE_VOCAB to the file"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise FileNotFoundError(f"CLIP BPE vocabulary not found at {path}; set XCLIP_BPE_VOCAB to the file")
    return path


def _byte_symbols() -> list[str]:
    """One printable unicode character per byte value.

    Bytes that are visible Latin-1 characters stand for themselves; the others
    (controls, space, soft hyphen...) take code points 256, 257, ... in byte order.
    """
    visible = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, extra = [], 0
    for b in range(256):
        if b in visible:
            table.append(chr(b))
        else:
            table.append(chr(256 + extra))
            extra += 1
    return table


class Tokenizer:
    """``encode(text) -> list[int]`` (no <sot>/<eot>); ``__call__(texts) -> LongTensor [K, context_length]``."""

    def __init__(self, vocab_path: str | os.PathLike | None = None, context_length: int = 77) -> None:
        path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 1 + _NUM_MERGES]]
        if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{path} is not a CLIP BPE merges file ({len(merges)} merges read)")
        self.byte_symbols = _byte_symbols()
        base = sorted(self.byte_symbols, key=ord)  # CLIP's id order: the visible bytes, then the remapped ones
        symbols = base + [s + _EOW for s in base] + ["".join(m) for m in merges]
        symbols += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {s: i for i, s in enumerate(symbols)}
        self.decoder = symbols
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.context_length = context_length
        self.sot, self.eot = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        assert (self.sot, self.eot) == (SOT, EOT)
        import regex

        self._split = regex.compile(
            r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
            regex.IGNORECASE,
        )
        self._bpe_cached = functools.lru_cache(maxsize=50_000)(self._bpe)

    @staticmethod
    def clean(text: str) -> str:
        try:
            import ftfy

            text = ftfy.fix_text(text)
        except ImportError:  # ftfy only repairs mojibake; tokenisation works without it
            pass
        text = html.unescape(html.unescape(text)).strip()
        return " ".join(text.split()).lower()

    def _bpe(self, word: str) -> tuple[str, ...]:
        """Merge the symbols of one pre-token, lowest-ranked pair first, until no merge applies."""
        parts = list(word[:-1]) + [word[-1] + _EOW]
        ranks = self.ranks
        while len(parts) > 1:
            best, best_rank = None, None
            for i in range(len(parts) - 1):
                r = ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = (parts[i], parts[i + 1]), r
            if best is None:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._split.findall(self.clean(text)):
            if piece in ("<|startoftext|>", "<|endoftext|>"):  # as OpenAI's CLIP: the special ids
                ids.append(self.encoder[piece])
                continue
            word = "".join(self.byte_symbols[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self._bpe_cached(word))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        inv = {s: b for b, s in enumerate(self.byte_symbols)}
        out = []
        for i in ids:
            i = int(i)
            if i in (self.sot, self.eot, 0):
                continue
            out.append(self.decoder[i])
        text = "".join(out)
        data = bytearray()
        for word in text.split(_EOW):
            data.extend(inv[c] for c in word)
            data.extend(b" ")
        return data.decode("utf-8", errors="replace").strip()

    def __call__(self, texts: str | Iterable[str], context_length: int | None = None) -> torch.Tensor:
        L = self.context_length if context_length is None else context_length
        if isinstance(L, bool) or not isinstance(L, int) or L < 2:
            raise ValueError(f"context_length must be an int >= 2, got {L!r}")
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"tokenize expects strings, got {type(t).__name__} at index {i}")
        out = torch.zeros(len(texts), L, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot] + self.encode(text)[: L - 2] + [self.eot]  # over-long: truncated, <eot> kept last
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


@functools.lru_cache(maxsize=1)
def _default_tokenizer() -> Tokenizer:
    return Tokenizer()


def tokenize(texts: str | Iterable[str], context_length: int = 77) -> torch.Tensor:
    """CLIP BPE token ids ``LongTensor [K, context_length]``: 49406 <sot> ... 49407 <eot>, zero padding."""
    return _default_tokenizer()(texts, context_length=context_length)


def truncated_prompts(texts: Iterable[str], context_length: int = 77) -> list[str]:
    """The texts :func:`tokenize` would cut short at ``context_length`` (to warn: cut prompts may coincide)."""
    tok = _default_tokenizer()
    return [t for t in texts if len(tok.encode(t)) > context_length - 2]

