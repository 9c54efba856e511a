// Operator schemas of the CUDA backend of xclip_kernels.
//
// The Python package registers the public ops (xclip::cross_frame_attn, ...)
// and their _fwd/_bwd custom ops; the CUDA backend calls the kernel-level ops
// below, whose CUDA implementations are registered with
// TORCH_LIBRARY_IMPL(xclip, CUDA, m) beside each kernel in csrc/*.cu.
// C++ users (see CMakeLists.txt) call them through the dispatcher:
//   torch::Dispatcher::singleton().findSchemaOrThrow("xclip::cross_frame_attn_fwd_cuda", "")
// Layout [batch, seq, heads, head_dim]; lse is float32 [batch, heads, q_len].
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(xclip, m) {
  m.def("cross_frame_attn_fwd_cuda(Tensor q, Tensor k, Tensor v, float scale) -> (Tensor, Tensor)");
  m.def(
      "cross_frame_attn_bwd_cuda(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "float scale) -> (Tensor, Tensor, Tensor)");
  m.def(
      "intra_frame_attn_fwd_cuda(Tensor q, Tensor k, Tensor v, Tensor k_msg, Tensor v_msg, float scale) "
      "-> (Tensor, Tensor)");
  m.def(
      "intra_frame_attn_bwd_cuda(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor k_msg, Tensor v_msg, "
      "Tensor out, Tensor lse, float scale) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("prompt_cross_attn_fwd_cuda(Tensor q, Tensor k, Tensor v, float scale) -> (Tensor, Tensor)");
  m.def(
      "prompt_cross_attn_bwd_cuda(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "float scale) -> (Tensor, Tensor, Tensor)");
}
