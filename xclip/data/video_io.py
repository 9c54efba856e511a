"""Video decoding and writing.

Three decoders share one interface (:class:`VideoReader`):

* ``"torchcodec"``: torchcodec's ``VideoDecoder`` (PyTorch's decoding
  library, FFmpeg underneath). Opens the file with an exact seek index
  (``seek_mode="exact"``: one scan of the packets, no decoding) and then
  decodes only the requested frames, seeking to the keyframe before each.
  Needs FFmpeg's shared libraries (libavcodec & co., major versions 4 to 9) on the
  system; ``scripts/install.sh`` installs them where it can. With
  ``device="cuda"`` (``data.decode_device: cuda``) it decodes on the GPU with
  NVDEC and returns CUDA tensors.
* ``"pyav"``: PyAV (FFmpeg bindings; the wheel bundles its own FFmpeg, so it
  needs nothing from the system). Decodes sequentially from the start and
  keeps only the requested frames, stopping after the last one. Slower on
  long videos, but runs everywhere.
* ``"decord"``: ``decord.VideoReader`` (optional extra ``pip install
  xclip-kernels[decord]``; no release since 2021). Fast random access.

``open_video(path, decoder="auto")`` uses torchcodec when it is installed
and can load FFmpeg, otherwise PyAV; it also falls back to PyAV when
torchcodec cannot open a file or fails to decode it. decord is used only
when asked for by name. A decoder asked for by name never falls back.
Frames come back as a ``uint8`` tensor ``[T, H, W, 3]``
(RGB). Any failure to open or decode raises :class:`VideoDecodeError`
naming the file.

``write_video(path, frames [T, H, W, 3] uint8, fps=8)`` encodes with libx264
(yuv420p), used by the tests and the demo's synthetic data.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch

__all__ = ["VideoDecodeError", "VideoReader", "TorchCodecReader", "DecordReader", "PyAVReader", "open_video",
           "decoder_available", "decoder_status", "check_decoder", "check_decode_device", "auto_decoder", "write_video", "DECODERS",
           "DECODE_DEVICES"]

DECODERS = ("auto", "torchcodec", "pyav", "decord")
DECODE_DEVICES = ("cpu", "cuda")


class VideoDecodeError(RuntimeError):
    """A video could not be opened or decoded (the message names the file)."""


@functools.lru_cache(maxsize=None)
def decoder_status(name: str) -> tuple[bool, str]:
    """``(usable, reason)`` for decoder ``name``: is it installed and can it run here?"""
    try:
        if name == "torchcodec":
            import torchcodec
            from torchcodec.decoders import VideoDecoder  # noqa: F401

            # torchcodec imports without FFmpeg and reports None here; decoding would then fail.
            if getattr(torchcodec, "ffmpeg_major_version", 0) is None:
                return False, ("torchcodec is installed but cannot load FFmpeg's shared libraries "
                               "(libavutil, libavcodec, libavformat, ... major versions 4 to 9); install them "
                               "(scripts/install.sh does, e.g. apt-get install libavcodec59 libavformat59 ...) "
                               "or use decoder pyav")
        elif name == "pyav":
            import av  # noqa: F401
        elif name == "decord":
            import decord  # noqa: F401
        else:
            return False, f"unknown decoder {name!r} (one of {DECODERS[1:]})"
    except Exception as e:
        hint = " (pip install 'xclip-kernels[decord]')" if name == "decord" else ""
        return False, f"{name} is not installed or fails to import: {e}".splitlines()[0] + hint
    return True, ""


def decoder_available(name: str) -> bool:
    return decoder_status(name)[0]


def auto_decoder() -> str:
    """The decoder ``"auto"`` opens files with first: torchcodec when usable, else PyAV."""
    return "torchcodec" if decoder_available("torchcodec") else "pyav"


def check_decoder(decoder: str, key: str = "data.decoder") -> str:
    """Validate a decoder name; one asked for by name must be usable here. Raises ``ValueError`` naming ``key``."""
    if decoder not in DECODERS:
        raise ValueError(f"{key}={decoder!r}: must be one of {DECODERS}")
    if decoder != "auto":
        ok, why = decoder_status(decoder)
        if not ok:
            raise ValueError(f"{key}={decoder}: {why}")
    return decoder


def check_decode_device(device: str, decoder: str = "auto", key: str = "data.decode_device") -> str:
    """Validate a decode device (``"cpu"`` or ``"cuda"``/``"cuda:N"``) against the decoder and this machine.

    Raises ``ValueError`` naming ``key``: ``cuda`` needs torchcodec (NVDEC), a
    usable torchcodec and a CUDA GPU. Returns the device string.
    """
    dev = str(device)
    if dev == "cpu":
        return dev
    if not (dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ValueError(f"{key}={dev!r}: must be one of {DECODE_DEVICES} (or cuda:N)")
    if decoder not in ("auto", "torchcodec"):
        raise ValueError(f"{key}={dev}: GPU decoding (NVDEC) needs decoder torchcodec or auto, got decoder {decoder!r}")
    ok, why = decoder_status("torchcodec")
    if not ok:
        raise ValueError(f"{key}={dev}: GPU decoding needs torchcodec: {why}")
    if not torch.cuda.is_available():
        raise ValueError(f"{key}={dev}: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
                         f"use {key}=cpu")
    return dev


class VideoReader:
    """Interface: ``len(reader)`` frames, ``reader.get_frames(indices)`` -> uint8 ``[T, H, W, 3]``."""

    path: str
    name: str = "?"

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_indices(self, indices: Sequence[int]) -> list[int]:
        n = len(self)
        idx = [int(i) for i in indices]
        bad = [i for i in idx if i < 0 or i >= n]
        if bad:
            raise ValueError(f"{self.path}: frame indices {bad[:5]} out of range for {n} frames")
        return idx


class TorchCodecReader(VideoReader):
    """torchcodec ``VideoDecoder``: exact seek index at open, decodes only the requested frames.

    ``device="cuda"`` decodes with NVDEC and returns CUDA tensors.
    """

    name = "torchcodec"

    def __init__(self, path: str, num_threads: int = 1, device: str = "cpu"):
        ok, why = decoder_status("torchcodec")
        if not ok:
            raise VideoDecodeError(f"torchcodec cannot open {path}: {why}")
        from torchcodec.decoders import VideoDecoder

        self.path, self.device = path, str(device)
        try:
            self._dec = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=max(int(num_threads), 0),
                                     device=self.device, seek_mode="exact")
            self._n = len(self._dec)
        except Exception as e:  # torchcodec raises RuntimeError / ValueError from FFmpeg
            raise VideoDecodeError(f"torchcodec cannot open {path}: {e}".splitlines()[0]) from e
        if self._n <= 0:
            raise VideoDecodeError(f"torchcodec: {path} has no frames")

    def __len__(self) -> int:
        return self._n

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        idx = self._check_indices(indices)
        try:
            data = self._dec.get_frames_at(idx).data  # [T, H, W, 3] uint8, in the requested order
        except Exception as e:
            raise VideoDecodeError(f"torchcodec cannot decode frames {idx[:8]} of {self.path}: {e}".splitlines()[0]) from e
        return data.contiguous()

    def close(self) -> None:
        self._dec = None


class DecordReader(VideoReader):
    name = "decord"

    def __init__(self, path: str, num_threads: int = 1):
        import decord

        self.path = path
        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=int(num_threads))
            self._n = len(self._vr)
        except Exception as e:  # decord raises DECORDError / RuntimeError
            raise VideoDecodeError(f"decord cannot open {path}: {e}".splitlines()[0]) from e
        if self._n <= 0:
            raise VideoDecodeError(f"decord: {path} has no frames")

    def __len__(self) -> int:
        return self._n

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        idx = self._check_indices(indices)
        try:
            arr = self._vr.get_batch(idx).asnumpy()
        except Exception as e:
            raise VideoDecodeError(f"decord cannot decode frames {idx[:8]} of {self.path}: {e}".splitlines()[0]) from e
        return torch.from_numpy(np.ascontiguousarray(arr))

    def close(self) -> None:
        self._vr = None


class PyAVReader(VideoReader):
    """Sequential PyAV decoder.

    The frame count comes from the stream header when present, otherwise from
    counting the stream's packets (no decoding). If the header overstates the
    count, requests past the last decodable frame get the last frame.
    """

    name = "pyav"

    def __init__(self, path: str, num_threads: int = 1):
        import av

        self.path = path
        self._threads = max(int(num_threads), 0)
        try:
            with av.open(path) as c:
                if not c.streams.video:
                    raise VideoDecodeError(f"pyav: {path} has no video stream")
                s = c.streams.video[0]
                n = int(s.frames or 0)
                if n <= 0:
                    n = sum(1 for p in c.demux(s) if p.size > 0)
        except VideoDecodeError:
            raise
        except Exception as e:
            raise VideoDecodeError(f"pyav cannot open {path}: {e}".splitlines()[0]) from e
        if n <= 0:
            raise VideoDecodeError(f"pyav: {path} has no frames")
        self._n = n

    def __len__(self) -> int:
        return self._n

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        import av

        idx = self._check_indices(indices)
        wanted = sorted(set(idx))
        got: dict[int, np.ndarray] = {}
        last_frame = None
        count = 0
        try:
            with av.open(self.path) as c:
                s = c.streams.video[0]
                if self._threads != 1:
                    s.thread_type = "AUTO"
                    s.thread_count = self._threads
                for j, frame in enumerate(c.decode(s)):
                    last_frame = frame
                    if j == wanted[count]:
                        got[j] = frame.to_ndarray(format="rgb24")
                        count += 1
                        if count == len(wanted):
                            break
        except Exception as e:
            raise VideoDecodeError(f"pyav cannot decode {self.path}: {e}".splitlines()[0]) from e
        if count < len(wanted):
            # The header overstated the frame count: repeat the last decodable frame.
            if last_frame is None:
                raise VideoDecodeError(f"pyav: no frame of {self.path} could be decoded")
            fill = last_frame.to_ndarray(format="rgb24")
            for k in wanted[count:]:
                got[k] = fill
        return torch.from_numpy(np.stack([got[i] for i in idx]))


class _FallbackReader(VideoReader):
    """The primary decoder (torchcodec), switching to PyAV for good if it fails to decode this file."""

    def __init__(self, primary: VideoReader, num_threads: int):
        self.path, self._primary, self._threads = primary.path, primary, num_threads
        self._fallback: VideoReader | None = None

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._fallback.name if self._fallback is not None else self._primary.name

    def __len__(self) -> int:
        return len(self._primary)

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        idx = self._check_indices(indices)
        if self._fallback is None:
            try:
                return self._primary.get_frames(idx)
            except VideoDecodeError as first:
                try:
                    self._fallback = PyAVReader(self.path, self._threads)
                except VideoDecodeError as second:
                    raise VideoDecodeError(f"{first}; {second}") from second
                self._primary.close()
        last = len(self._fallback) - 1  # the two may count frames differently
        return self._fallback.get_frames([min(i, last) for i in idx])

    def close(self) -> None:
        self._primary.close()


def open_video(path: str | os.PathLike, decoder: str = "auto", num_threads: int = 1,
               device: str = "cpu") -> VideoReader:
    """Open ``path`` with ``decoder``.

    ``"auto"``: torchcodec when usable (falling back to PyAV for a file it
    cannot open or decode), else PyAV. ``device="cuda"`` decodes on the GPU
    (torchcodec / NVDEC only; see :func:`check_decode_device`).
    """
    path = os.fspath(path)
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    device = check_decode_device(device, decoder, key="device") if device != "cpu" else "cpu"
    if not os.path.isfile(path):
        raise VideoDecodeError(f"video file {path} does not exist")
    if decoder == "torchcodec" or device != "cpu":
        return TorchCodecReader(path, num_threads, device)
    if decoder == "decord":
        return DecordReader(path, num_threads)
    if decoder == "pyav":
        return PyAVReader(path, num_threads)
    errors = []
    if decoder_available("torchcodec"):
        try:
            return _FallbackReader(TorchCodecReader(path, num_threads), num_threads)
        except VideoDecodeError as e:
            errors.append(str(e))
    try:
        return PyAVReader(path, num_threads)
    except VideoDecodeError as e:
        errors.append(str(e))
    raise VideoDecodeError("; ".join(errors))


def write_video(path: str | os.PathLike, frames, fps: int = 8, crf: int = 18) -> None:
    """Encode ``frames`` (uint8 ``[T, H, W, 3]`` tensor or array, RGB) as H.264 mp4.

    H and W must be even (yuv420p). ``crf`` trades size for quality (0 = lossless).
    """
    import av

    arr = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"write_video: frames must be [T, H, W, 3], got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise ValueError(f"write_video: frames must be uint8, got {arr.dtype}")
    t, h, w, _ = arr.shape
    if t < 1 or h % 2 or w % 2:
        raise ValueError(f"write_video: need T >= 1 and even H, W for yuv420p, got T={t}, H={h}, W={w}")
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))) or ".", exist_ok=True)
    with av.open(os.fspath(path), mode="w") as c:
        s = c.add_stream("libx264", rate=Fraction(int(fps)))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": str(int(crf)), "preset": "veryfast"}
        for f in arr:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
