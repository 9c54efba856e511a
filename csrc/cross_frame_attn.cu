// CUDA backend of xclip::cross_frame_attn: the T message tokens of each video
// attend to each other, per head. q, k, v: [B, T, H, D] (any strides).
//
// This translation unit also holds the kernel launchers of all three ops
// (launch_attention_fwd / launch_attention_bwd of attention_params.h), so the
// kernels of attention_kernels.cuh are compiled once per architecture.
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "attention_host.h"
#include "attention_kernels.cuh"

namespace xclip {
namespace {

// Opt the kernel into `bytes` of dynamic shared memory, or explain why the
// current device cannot give that much.
template <typename Kernel>
void prepare_shared_memory(Kernel kernel, size_t bytes, const char* what, int head_dim) {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int max_optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(bytes <= static_cast<size_t>(max_optin), "xclip CUDA ", what, " kernel: head_dim ", head_dim,
              " needs ", bytes, " bytes of shared memory per block, device ", device, " allows ", max_optin);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

constexpr int64_t kMaxGridY = 65535;

// Every configuration fits in the shared memory a block may opt into on any
// sm_8x / sm_90 GPU (99 KiB on sm_86 / sm_89; 163 KiB on sm_80, 227 KiB on sm_90).
constexpr size_t kSmemBudget = 99 * 1024;
template <typename T>
constexpr bool fits_smem_budget() {
  using namespace kernels;
  return fwd_layout<T>(round_up16(kMaxHeadDim)).bytes <= kSmemBudget &&
         bwd_layout<T>(round_up16(kMaxHeadDim)).bytes <= kSmemBudget;
}
static_assert(fits_smem_budget<float>(), "float32 tiles exceed the shared-memory budget");
static_assert(fits_smem_budget<__half>(), "float16 tiles exceed the shared-memory budget");
static_assert(fits_smem_budget<__nv_bfloat16>(), "bfloat16 tiles exceed the shared-memory budget");

template <typename T>
void launch_fwd(const AttnFwdParams& p, cudaStream_t stream) {
  using namespace kernels;
  constexpr int BR = Tiles<T>::kFwdBR;
  const size_t smem = fwd_layout<T>(round_up16(p.D)).bytes;
  const int64_t q_tiles = (static_cast<int64_t>(p.Lq) + BR - 1) / BR;
  TORCH_CHECK(q_tiles <= kMaxGridY, "xclip CUDA forward kernel: query length ", p.Lq, " needs ", q_tiles,
              " tiles of ", BR, " rows, more than the grid's ", kMaxGridY);
  prepare_shared_memory(attn_fwd_kernel<T>, smem, "forward", p.D);
  const dim3 grid(static_cast<unsigned>(p.B) * static_cast<unsigned>(p.H), static_cast<unsigned>(q_tiles));
  attn_fwd_kernel<T><<<grid, kThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_bwd(const AttnBwdParams& p, cudaStream_t stream) {
  using namespace kernels;
  constexpr int BC = Tiles<T>::kBwdBC;
  const size_t smem = bwd_layout<T>(round_up16(p.D)).bytes;
  const int64_t k_tiles = (static_cast<int64_t>(p.Lk) + BC - 1) / BC + (static_cast<int64_t>(p.Lk2) + BC - 1) / BC;
  TORCH_CHECK(k_tiles <= kMaxGridY, "xclip CUDA backward kernel: key length ", p.Lk, " + ", p.Lk2, " needs ", k_tiles,
              " tiles of ", BC, " rows, more than the grid's ", kMaxGridY);
  prepare_shared_memory(attn_bwd_kernel<T>, smem, "backward", p.D);
  const dim3 grid(static_cast<unsigned>(p.B) * static_cast<unsigned>(p.H), static_cast<unsigned>(k_tiles));
  attn_bwd_kernel<T><<<grid, kThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void launch_attention_fwd(const AttnFwdParams& p, ElemType t, cudaStream_t stream) {
  switch (t) {
    case ElemType::kFloat16:
      return launch_fwd<__half>(p, stream);
    case ElemType::kBFloat16:
      return launch_fwd<__nv_bfloat16>(p, stream);
    case ElemType::kFloat32:
      return launch_fwd<float>(p, stream);
  }
  TORCH_CHECK(false, "xclip CUDA forward kernel: unknown element type");
}

void launch_attention_bwd(const AttnBwdParams& p, ElemType t, cudaStream_t stream) {
  switch (t) {
    case ElemType::kFloat16:
      return launch_bwd<__half>(p, stream);
    case ElemType::kBFloat16:
      return launch_bwd<__nv_bfloat16>(p, stream);
    case ElemType::kFloat32:
      return launch_bwd<float>(p, stream);
  }
  TORCH_CHECK(false, "xclip CUDA backward kernel: unknown element type");
}

namespace {

constexpr const char* kFwd = "cross_frame_attn_fwd_cuda";
constexpr const char* kBwd = "cross_frame_attn_bwd_cuda";
constexpr const char* kLayout = "[B, T, H, D]";

// q, k, v: 4-D [B, T, H, D] CUDA tensors of one floating dtype and device, same shape.
void check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  host::check_tensor(op, "q", q, 4, kLayout);
  host::check_tensor(op, "k", k, 4, kLayout);
  host::check_tensor(op, "v", v, 4, kLayout);
  host::check_float_type(op, "q", q);
  host::check_like(op, "k", k, "q", q);
  host::check_like(op, "v", v, "q", q);
  const char* dims[4] = {"batch B", "frames T", "heads H", "head_dim D"};
  for (int64_t d = 0; d < 4; ++d) {
    host::check_size(op, "k", k, d, q.size(d), dims[d]);
    host::check_size(op, "v", v, d, q.size(d), dims[d]);
  }
}

std::tuple<at::Tensor, at::Tensor> cross_frame_attn_fwd_cuda(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& v, double scale) {
  check_inputs(kFwd, q, k, v);
  return host::attention_forward(kFwd, q, host::KVSource{k, v}, nullptr, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_frame_attn_bwd_cuda(const at::Tensor& grad_out,
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
  m.impl("cross_frame_attn_fwd_cuda", TORCH_FN(xclip::cross_frame_attn_fwd_cuda));
  m.impl("cross_frame_attn_bwd_cuda", TORCH_FN(xclip::cross_frame_attn_bwd_cuda));
}
