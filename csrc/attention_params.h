// Kernel-level parameters of the generic attention kernels of the CUDA backend
// and the launcher entry points (defined once, in cross_frame_attn.cu, so the
// kernels are compiled in a single translation unit).
//
// One kernel pair covers the three X-CLIP ops:
//   out[b, i, h] = softmax_j(scale * q[b, i, h] . key_j) @ value_j
// over the keys of source 1 (k, v: Lk rows) followed by those of an optional
// source 2 (k2, v2: Lk2 rows; the message tokens of intra_frame_attn), read in
// place from two tensors instead of a concatenation. A query batch stride of 0
// reads one shared q for every batch element (prompt_cross_attn's shared q);
// its gradient buffer then has batch stride 0 too, so the float32 atomic adds
// of dQ sum it over the batch.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace xclip {

// A [batch, seq, heads, head_dim] operand read through arbitrary strides
// (in elements). Batch stride 0 means "the same for every batch element".
struct StridedInput {
  const void* ptr = nullptr;
  int64_t sb = 0, sl = 0, sh = 0, sd = 0;
};

enum class ElemType { kFloat32, kFloat16, kBFloat16 };

struct AttnFwdParams {
  StridedInput q, k, v, k2, v2;  // k2/v2 unused when Lk2 == 0
  void* out = nullptr;           // contiguous [B, Lq, H, D], q's dtype
  float* lse = nullptr;          // contiguous [B, H, Lq], float32
  int B = 0, H = 0, Lq = 0, Lk = 0, Lk2 = 0, D = 0;
  float scale = 1.f;
};

struct AttnBwdParams {
  StridedInput q, k, v, k2, v2, dout;
  const float* lse = nullptr;    // contiguous [B, H, Lq]
  const float* delta = nullptr;  // contiguous [B, H, Lq]: rowsum(dout * out)
  float* dq_acc = nullptr;       // float32, zero-initialised; last dim contiguous
  int64_t dq_sb = 0, dq_sl = 0, dq_sh = 0;
  void* dk = nullptr;   // contiguous [B, Lk, H, D], q's dtype
  void* dv = nullptr;   // contiguous [B, Lk, H, D]
  void* dk2 = nullptr;  // contiguous [B, Lk2, H, D]
  void* dv2 = nullptr;  // contiguous [B, Lk2, H, D]
  int B = 0, H = 0, Lq = 0, Lk = 0, Lk2 = 0, D = 0;
  float scale = 1.f;
};

// Largest head dim the kernels take (shared-memory tiles are sized for it).
constexpr int kMaxHeadDim = 128;

// Launch on `stream` (the device must be current). Throw c10::Error on a
// configuration the device cannot run and check the launch.
void launch_attention_fwd(const AttnFwdParams& p, ElemType t, cudaStream_t stream);
void launch_attention_bwd(const AttnBwdParams& p, ElemType t, cudaStream_t stream);

}  // namespace xclip
