// Host side shared by the three ops of the CUDA backend: argument checks
// (TORCH_CHECK naming the op and the argument, since C++ callers bypass the
// Python validation), output allocation and the calls of the kernel
// launchers declared in attention_params.h.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "attention_params.h"

namespace xclip {
namespace host {

// A key / value source of the generic kernel.
struct KVSource {
  const at::Tensor& k;
  const at::Tensor& v;
};

inline void check_tensor(const char* op, const char* name, const at::Tensor& t, int64_t rank, const char* layout) {
  TORCH_CHECK(t.defined(), op, ": argument '", name, "' is an undefined tensor");
  TORCH_CHECK(t.is_cuda(), op, ": argument '", name, "' must be a CUDA tensor, got one on device ", t.device());
  TORCH_CHECK(t.dim() == rank, op, ": argument '", name, "' must be ", rank, "-D ", layout, ", got a ", t.dim(),
              "-D tensor of shape ", t.sizes());
}

inline void check_float_type(const char* op, const char* name, const at::Tensor& t) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, op, ": argument '", name,
              "' has dtype ", st, ", expected Float, Half or BFloat16");
}

// dtype and device of `t` equal those of `ref`.
inline void check_like(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                       const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": argument '", name, "' has dtype ", t.scalar_type(),
              ", expected ", ref.scalar_type(), " (the dtype of '", ref_name, "')");
  TORCH_CHECK(t.device() == ref.device(), op, ": argument '", name, "' is on device ", t.device(), ", expected ",
              ref.device(), " (the device of '", ref_name, "')");
}

inline void check_size(const char* op, const char* name, const at::Tensor& t, int64_t dim, int64_t expected,
                       const char* what) {
  TORCH_CHECK(t.size(dim) == expected, op, ": argument '", name, "' has shape ", t.sizes(), ": ", what, " (dim ",
              dim, ") is ", t.size(dim), ", expected ", expected);
}

inline void check_int_range(const char* op, const char* what, int64_t x) {
  TORCH_CHECK(x >= 0 && x <= std::numeric_limits<int32_t>::max(), op, ": ", what, " = ", x,
              " is larger than the kernels' 32-bit index range");
}

inline ElemType elem_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf:
      return ElemType::kFloat16;
    case at::kBFloat16:
      return ElemType::kBFloat16;
    default:
      return ElemType::kFloat32;
  }
}

// [batch, seq, heads, dim] strides of a 4-D tensor, or of a 3-D [seq, heads,
// dim] tensor shared by every batch element (batch stride 0).
inline StridedInput strided(const at::Tensor& t) {
  StridedInput s;
  s.ptr = t.data_ptr();
  if (t.dim() == 4) {
    s.sb = t.stride(0), s.sl = t.stride(1), s.sh = t.stride(2), s.sd = t.stride(3);
  } else {
    s.sb = 0, s.sl = t.stride(0), s.sh = t.stride(1), s.sd = t.stride(2);
  }
  return s;
}

inline void check_head_dim_and_scale(const char* op, const at::Tensor& q, int64_t D, double scale) {
  TORCH_CHECK(D >= 1 && D <= kMaxHeadDim, op, ": argument 'q' has shape ", q.sizes(), ": head_dim ", D,
              " is not supported by the CUDA kernels (expected 1 <= head_dim <= ", kMaxHeadDim, ")");
  TORCH_CHECK(std::isfinite(scale), op, ": argument 'scale' must be finite, got ", scale);
}

// out = softmax(scale * q @ cat(k, k2).T) @ cat(v, v2) per (batch, head).
// q: [B, Lq, H, D], or [Lq, H, D] when shared_q; k, v: [B, Lk, H, D];
// optional second source k2, v2: [B, Lk2, H, D]. Shapes are checked by the caller.
inline std::tuple<at::Tensor, at::Tensor> attention_forward(const char* op, const at::Tensor& q, KVSource s1,
                                                            const KVSource* s2, double scale) {
  const bool shared_q = q.dim() == 3;
  const int64_t B = s1.k.size(0), Lk = s1.k.size(1), H = s1.k.size(2), D = s1.k.size(3);
  const int64_t Lq = shared_q ? q.size(0) : q.size(1);
  const int64_t Lk2 = s2 ? s2->k.size(1) : 0;
  check_head_dim_and_scale(op, q, D, scale);
  for (auto [what, x] : {std::pair<const char*, int64_t>{"batch * heads", B * H}, {"query length", Lq},
                         {"key length", Lk}, {"second key length", Lk2}}) {
    check_int_range(op, what, x);
  }
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({B, Lq, H, D}, q.options());
  at::Tensor lse = at::empty({B, H, Lq}, q.options().dtype(at::kFloat));
  if (B * H == 0 || Lq == 0) return {out, lse};
  TORCH_CHECK(Lk + Lk2 >= 1, op, ": argument 'k' has shape ", s1.k.sizes(),
              ": no keys to attend to (expected at least one token)");

  AttnFwdParams p;
  p.q = strided(q);
  p.k = strided(s1.k);
  p.v = strided(s1.v);
  if (s2) {
    p.k2 = strided(s2->k);
    p.v2 = strided(s2->v);
  }
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.B = static_cast<int>(B), p.H = static_cast<int>(H), p.Lq = static_cast<int>(Lq);
  p.Lk = static_cast<int>(Lk), p.Lk2 = static_cast<int>(Lk2), p.D = static_cast<int>(D);
  p.scale = static_cast<float>(scale);
  launch_attention_fwd(p, elem_type(q), c10::cuda::getCurrentCUDAStream().stream());
  return {out, lse};
}

// Gradients of attention_forward: {dq, dk, dv} plus {dk2, dv2} with a second
// source. A shared q gets its gradient summed over the batch.
inline std::vector<at::Tensor> attention_backward(const char* op, const at::Tensor& dout, const at::Tensor& q,
                                                  KVSource s1, const KVSource* s2, const at::Tensor& out,
                                                  const at::Tensor& lse, double scale) {
  const bool shared_q = q.dim() == 3;
  const int64_t B = s1.k.size(0), Lk = s1.k.size(1), H = s1.k.size(2), D = s1.k.size(3);
  const int64_t Lq = shared_q ? q.size(0) : q.size(1);
  const int64_t Lk2 = s2 ? s2->k.size(1) : 0;
  check_head_dim_and_scale(op, q, D, scale);
  for (auto [what, x] : {std::pair<const char*, int64_t>{"batch * heads", B * H}, {"query length", Lq},
                         {"key length", Lk}, {"second key length", Lk2}}) {
    check_int_range(op, what, x);
  }
  // grad_out and out: [B, Lq, H, D] in q's dtype; lse: float32 [B, H, Lq]
  check_tensor(op, "grad_out", dout, 4, "[batch, q_len, heads, head_dim]");
  check_like(op, "grad_out", dout, "q", q);
  check_tensor(op, "out", out, 4, "[batch, q_len, heads, head_dim]");
  check_like(op, "out", out, "q", q);
  const int64_t expect_out[4] = {B, Lq, H, D};
  const char* out_dims[4] = {"batch", "query length", "heads", "head_dim"};
  for (int64_t d = 0; d < 4; ++d) {
    check_size(op, "grad_out", dout, d, expect_out[d], out_dims[d]);
    check_size(op, "out", out, d, expect_out[d], out_dims[d]);
  }
  check_tensor(op, "lse", lse, 3, "[batch, heads, q_len]");
  TORCH_CHECK(lse.scalar_type() == at::kFloat, op, ": argument 'lse' has dtype ", lse.scalar_type(),
              ", expected Float");
  TORCH_CHECK(lse.device() == q.device(), op, ": argument 'lse' is on device ", lse.device(), ", expected ",
              q.device(), " (the device of 'q')");
  const int64_t expect_lse[3] = {B, H, Lq};
  const char* lse_dims[3] = {"batch", "heads", "query length"};
  for (int64_t d = 0; d < 3; ++d) check_size(op, "lse", lse, d, expect_lse[d], lse_dims[d]);

  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor dk = at::empty({B, Lk, H, D}, q.options());
  at::Tensor dv = at::empty({B, Lk, H, D}, q.options());
  at::Tensor dk2, dv2;
  if (s2) {
    dk2 = at::empty({B, Lk2, H, D}, q.options());
    dv2 = at::empty({B, Lk2, H, D}, q.options());
  }
  auto result = [&](at::Tensor dq) {
    std::vector<at::Tensor> r{std::move(dq), dk, dv};
    if (s2) {
      r.push_back(dk2);
      r.push_back(dv2);
    }
    return r;
  };
  if (B * H == 0 || Lq == 0) {  // no query: every gradient is zero
    dk.zero_();
    dv.zero_();
    if (s2) {
      dk2.zero_();
      dv2.zero_();
    }
    return result(at::zeros(q.sizes(), q.options()));
  }
  TORCH_CHECK(Lk + Lk2 >= 1, op, ": argument 'k' has shape ", s1.k.sizes(),
              ": no keys to attend to (expected at least one token)");

  // delta = rowsum(dO * O) in float32, [B, H, Lq]
  const at::Tensor delta = (dout.to(at::kFloat) * out.to(at::kFloat)).sum(-1).transpose(1, 2).contiguous();
  const at::Tensor lse_c = lse.contiguous();
  const std::vector<int64_t> dq_shape = shared_q ? std::vector<int64_t>{Lq, H, D} : std::vector<int64_t>{B, Lq, H, D};
  at::Tensor dq_acc = at::zeros(dq_shape, q.options().dtype(at::kFloat));

  AttnBwdParams p;
  p.q = strided(q);
  p.k = strided(s1.k);
  p.v = strided(s1.v);
  if (s2) {
    p.k2 = strided(s2->k);
    p.v2 = strided(s2->v);
    p.dk2 = dk2.data_ptr();
    p.dv2 = dv2.data_ptr();
  }
  p.dout = strided(dout);
  p.lse = lse_c.data_ptr<float>();
  p.delta = delta.data_ptr<float>();
  p.dq_acc = dq_acc.data_ptr<float>();
  const StridedInput dqs = strided(dq_acc);  // batch stride 0 for a shared q
  p.dq_sb = dqs.sb, p.dq_sl = dqs.sl, p.dq_sh = dqs.sh;
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.B = static_cast<int>(B), p.H = static_cast<int>(H), p.Lq = static_cast<int>(Lq);
  p.Lk = static_cast<int>(Lk), p.Lk2 = static_cast<int>(Lk2), p.D = static_cast<int>(D);
  p.scale = static_cast<float>(scale);
  launch_attention_bwd(p, elem_type(q), c10::cuda::getCurrentCUDAStream().stream());
  return result(dq_acc.to(q.scalar_type()));
}

}  // namespace host
}  // namespace xclip
