// CUDA backend of xclip::intra_frame_attn: each frame's N patch-token queries
// attend to its own N patch keys plus its M message keys. The two key/value
// sources are read in place (the kernel walks the patch tiles, then the
// message tile); no concatenation is built and no output row is produced for
// the messages. q, k, v: [F, N, H, D]; k_msg, v_msg: [F, M, H, D], 1 <= M <= 8.
// The kernels themselves live in attention_kernels.cuh (launched from
// cross_frame_attn.cu).
#include <torch/library.h>

#include "attention_host.h"

namespace xclip {
namespace {

constexpr const char* kFwd = "intra_frame_attn_fwd_cuda";
constexpr const char* kBwd = "intra_frame_attn_bwd_cuda";
constexpr int64_t kMaxMessages = 8;

void check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& k_msg, const at::Tensor& v_msg) {
  host::check_tensor(op, "q", q, 4, "[F, N, H, D]");
  host::check_tensor(op, "k", k, 4, "[F, N, H, D]");
  host::check_tensor(op, "v", v, 4, "[F, N, H, D]");
  host::check_tensor(op, "k_msg", k_msg, 4, "[F, M, H, D]");
  host::check_tensor(op, "v_msg", v_msg, 4, "[F, M, H, D]");
  host::check_float_type(op, "q", q);
  host::check_like(op, "k", k, "q", q);
  host::check_like(op, "v", v, "q", q);
  host::check_like(op, "k_msg", k_msg, "q", q);
  host::check_like(op, "v_msg", v_msg, "q", q);
  const char* dims[4] = {"frames F", "tokens N", "heads H", "head_dim D"};
  for (int64_t d = 0; d < 4; ++d) {
    host::check_size(op, "k", k, d, q.size(d), dims[d]);
    host::check_size(op, "v", v, d, q.size(d), dims[d]);
    if (d != 1) {
      host::check_size(op, "k_msg", k_msg, d, q.size(d), dims[d]);
      host::check_size(op, "v_msg", v_msg, d, q.size(d), dims[d]);
    }
  }
  host::check_size(op, "v_msg", v_msg, 1, k_msg.size(1), "messages M (must match 'k_msg')");
  TORCH_CHECK(k_msg.size(1) >= 1 && k_msg.size(1) <= kMaxMessages, op, ": argument 'k_msg' has shape ",
              k_msg.sizes(), ": M = ", k_msg.size(1), " messages, expected 1 <= M <= ", kMaxMessages);
}

std::tuple<at::Tensor, at::Tensor> intra_frame_attn_fwd_cuda(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& v, const at::Tensor& k_msg,
                                                             const at::Tensor& v_msg, double scale) {
  check_inputs(kFwd, q, k, v, k_msg, v_msg);
  const host::KVSource msg{k_msg, v_msg};
  return host::attention_forward(kFwd, q, host::KVSource{k, v}, &msg, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> intra_frame_attn_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& k_msg, const at::Tensor& v_msg, const at::Tensor& out, const at::Tensor& lse, double scale) {
  check_inputs(kBwd, q, k, v, k_msg, v_msg);
  const host::KVSource msg{k_msg, v_msg};
  auto g = host::attention_backward(kBwd, grad_out, q, host::KVSource{k, v}, &msg, out, lse, scale);
  return {g[0], g[1], g[2], g[3], g[4]};
}

}  // namespace
}  // namespace xclip

TORCH_LIBRARY_IMPL(xclip, CUDA, m) {
  m.impl("intra_frame_attn_fwd_cuda", TORCH_FN(xclip::intra_frame_attn_fwd_cuda));
  m.impl("intra_frame_attn_bwd_cuda", TORCH_FN(xclip::intra_frame_attn_bwd_cuda));
}
