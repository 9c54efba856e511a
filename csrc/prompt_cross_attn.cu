// CUDA backend of xclip::prompt_cross_attn: class-text queries attend to one
// video's visual tokens. q: [B, K, H, D], or [K, H, D] shared by all B videos
// (read in place through a batch stride of 0; its gradient is accumulated by
// every video into one float32 buffer, i.e. summed over videos);
// k, v: [B, N, H, D] -> out [B, K, H, D]. The kernels live in
// attention_kernels.cuh (launched from cross_frame_attn.cu).
#include <torch/library.h>

#include "attention_host.h"

namespace xclip {
namespace {

constexpr const char* kFwd = "prompt_cross_attn_fwd_cuda";
constexpr const char* kBwd = "prompt_cross_attn_bwd_cuda";

void check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.defined(), op, ": argument 'q' is an undefined tensor");
  host::check_tensor(op, "q", q, q.dim() == 3 ? 3 : 4, "[B, K, H, D] or shared [K, H, D]");
  host::check_tensor(op, "k", k, 4, "[B, N, H, D]");
  host::check_tensor(op, "v", v, 4, "[B, N, H, D]");
  host::check_float_type(op, "q", q);
  host::check_like(op, "k", k, "q", q);
  host::check_like(op, "v", v, "q", q);
  const char* dims[4] = {"batch B", "tokens N", "heads H", "head_dim D"};
  for (int64_t d = 0; d < 4; ++d) host::check_size(op, "v", v, d, k.size(d), dims[d]);
  const int64_t off = q.dim() - 4;  // -1 for a shared q
  if (q.dim() == 4) host::check_size(op, "k", k, 0, q.size(0), "batch B (must match 'q')");
  host::check_size(op, "k", k, 2, q.size(2 + off), "heads H (must match 'q')");
  host::check_size(op, "k", k, 3, q.size(3 + off), "head_dim D (must match 'q')");
}

std::tuple<at::Tensor, at::Tensor> prompt_cross_attn_fwd_cuda(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& v, double scale) {
  check_inputs(kFwd, q, k, v);
  return host::attention_forward(kFwd, q, host::KVSource{k, v}, nullptr, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> prompt_cross_attn_bwd_cuda(const at::Tensor& grad_out,
                                                                          const at::Tensor& q, const at::Tensor& k,
                                                                          const at::Tensor& v, const at::Tensor& out,
                                                                          const at::Tensor& lse, double scale) {
  check_inputs(kBwd, q, k, v);
  auto g = host::attention_backward(kBwd, grad_out, q, host::KVSource{k, v}, nullptr, out, lse, scale);
  return {g[0], g[1], g[2]};
}

}  // namespace
}  // namespace xclip

TORCH_LIBRARY_IMPL(xclip, CUDA, m) {
  m.impl("prompt_cross_attn_fwd_cuda", TORCH_FN(xclip::prompt_cross_attn_fwd_cuda));
  m.impl("prompt_cross_attn_bwd_cuda", TORCH_FN(xclip::prompt_cross_attn_bwd_cuda));
}
