"""Triton kernels of the three X-CLIP attention ops.

One module per op (``cross_frame_attn``, ``intra_frame_attn``,
``prompt_cross_attn``), each exposing ``forward(*tensors, scale) -> (out, lse)``,
``backward(do, *tensors, out, lse, scale, grads=None) -> grads`` (``grads``: optional
preallocated gradient outputs, any strides, e.g. views of one packed
``[F, N, 3, H, D]`` buffer, written in place and returned) and
``not_supported_reasons(inputs)``; the block-level building blocks they share
live in ``_common``. Modules are imported lazily by
:class:`xclip_kernels.backends.TritonBackend`.
"""
