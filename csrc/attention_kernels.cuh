// Device code of the CUDA backend: flash-attention-2 style forward (online
// softmax, O accumulated in float32) and backward (P recomputed from lse,
// dK/dV per key tile, dQ by float32 atomic adds) for the generic two-source
// attention described in attention_params.h.
//
// Structure, chosen to be simple to verify:
// - a block of 4 warps works on one (batch*head, tile); batch*head is on grid
//   axis x (up to 2^31 - 1), the tile index on axis y;
// - every operand tile is staged in shared memory; the head dim is padded to
//   a multiple of 16 with zeros;
// - matrix products are block-level "C (+)= A @ B" over shared memory with
//   16x16 output tiles spread over the warps: tensor cores (nvcuda::wmma,
//   m16n16k16, float32 accumulate) for float16 / bfloat16 on sm_80+, plain
//   float32 FMA otherwise (float32 inputs, or older architectures);
// - element-wise phases (softmax, dS) run between __syncthreads barriers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "attention_params.h"

namespace xclip {
namespace kernels {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---- element conversions ----------------------------------------------------

template <typename T>
struct Cvt;
template <>
struct Cvt<float> {
  static __device__ __forceinline__ float to_float(float x) { return x; }
  static __device__ __forceinline__ float from_float(float x) { return x; }
};
template <>
struct Cvt<__half> {
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
};
template <>
struct Cvt<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

template <typename T>
constexpr bool kIs16Bit = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

// ---- tile configuration -----------------------------------------------------

// Rows of the query tile (BR) and key tile (BC) of each kernel, and the row
// padding of shared-memory tiles of T (16-bit: keeps wmma's 16-byte multiple
// of the leading dimension; float32: an odd stride avoids bank conflicts).
template <typename T>
struct Tiles {
  static constexpr int kFwdBR = kIs16Bit<T> ? 64 : 32;
  static constexpr int kFwdBC = 32;
  static constexpr int kBwdBR = 32;
  static constexpr int kBwdBC = kIs16Bit<T> ? 32 : 16;
  static constexpr int kPad = kIs16Bit<T> ? 8 : 1;
  static constexpr int kFloatPad = 4;  // float tiles: wmma needs a multiple of 4
  static_assert(kFwdBR % (16 * 1) == 0 && kFwdBR % kWarps == 0, "forward query tile");
  static_assert(kFwdBC % 32 == 0, "forward key tile: whole warps of columns in the softmax");
  static_assert(kBwdBR % 16 == 0 && kBwdBC % 16 == 0, "backward tiles are multiples of 16");
};

__host__ __device__ constexpr size_t align128(size_t x) { return (x + 127) / 128 * 128; }
__host__ __device__ constexpr int round_up16(int x) { return (x + 15) / 16 * 16; }

// Shared-memory layout of the forward kernel (byte offsets; 128-byte aligned
// regions, which wmma's 256-bit pointer alignment needs).
struct FwdLayout {
  int ldT, ldS, ldP, ldO;
  size_t q, k, v, s, p, o, bytes;
};

template <typename T>
__host__ __device__ constexpr FwdLayout fwd_layout(int Dp) {
  using C = Tiles<T>;
  FwdLayout L{};
  L.ldT = Dp + C::kPad;
  L.ldS = C::kFwdBC + C::kFloatPad;
  L.ldP = C::kFwdBC + C::kPad;
  L.ldO = Dp + C::kFloatPad;
  size_t off = 0;
  L.q = off, off = align128(off + sizeof(T) * C::kFwdBR * L.ldT);
  L.k = off, off = align128(off + sizeof(T) * C::kFwdBC * L.ldT);
  L.v = off, off = align128(off + sizeof(T) * C::kFwdBC * L.ldT);
  L.s = off, off = align128(off + sizeof(float) * C::kFwdBR * L.ldS);
  L.p = off, off = align128(off + sizeof(T) * C::kFwdBR * L.ldP);
  L.o = off, off = align128(off + sizeof(float) * C::kFwdBR * L.ldO);
  L.bytes = off;
  return L;
}

// Backward: the float scores St / dPt ([BC][BR] each) share one region with the
// float dQ tile ([BR][Dp]); they are never live at the same time.
struct BwdLayout {
  int ldT, ldS, ldP, ldQ, ldKV;
  size_t k, v, q, dout, st, dpt, dq, pt, dst, dk, dv, lse, delta, bytes;
};

template <typename T>
__host__ __device__ constexpr BwdLayout bwd_layout(int Dp) {
  using C = Tiles<T>;
  BwdLayout L{};
  L.ldT = Dp + C::kPad;
  L.ldS = C::kBwdBR + C::kFloatPad;
  L.ldP = C::kBwdBR + C::kPad;
  L.ldQ = Dp + C::kFloatPad;
  L.ldKV = Dp + C::kFloatPad;
  size_t off = 0;
  L.k = off, off = align128(off + sizeof(T) * C::kBwdBC * L.ldT);
  L.v = off, off = align128(off + sizeof(T) * C::kBwdBC * L.ldT);
  L.q = off, off = align128(off + sizeof(T) * C::kBwdBR * L.ldT);
  L.dout = off, off = align128(off + sizeof(T) * C::kBwdBR * L.ldT);
  const size_t scores = align128(sizeof(float) * C::kBwdBC * L.ldS);
  const size_t dq = align128(sizeof(float) * C::kBwdBR * L.ldQ);
  L.st = off;
  L.dpt = off + scores;
  L.dq = off;
  off += (2 * scores > dq ? 2 * scores : dq);
  L.pt = off, off = align128(off + sizeof(T) * C::kBwdBC * L.ldP);
  L.dst = off, off = align128(off + sizeof(T) * C::kBwdBC * L.ldP);
  L.dk = off, off = align128(off + sizeof(float) * C::kBwdBC * L.ldKV);
  L.dv = off, off = align128(off + sizeof(float) * C::kBwdBC * L.ldKV);
  L.lse = off, off = align128(off + sizeof(float) * C::kBwdBR);
  L.delta = off, off = align128(off + sizeof(float) * C::kBwdBR);
  L.bytes = off;
  return L;
}

// ---- block-level matrix product over shared memory ---------------------------

// C[M x N] (float, row-major, ldc) = (ACC ? C : 0) + A[M x K] @ B[K x N] where
// A(m, k) = A_COL ? A[k * lda + m] : A[m * lda + k] and
// B(k, n) = B_COL ? B[n * ldb + k] : B[k * ldb + n].
// M, N, K are multiples of 16. All threads of the block call it; each 16x16
// output tile belongs to one warp. No barrier inside.
template <typename T, bool A_COL, bool B_COL, bool ACC>
__device__ __forceinline__ void block_gemm(const T* A, int lda, const T* B, int ldb, float* C, int ldc, int M,
                                           int N, int K) {
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int tiles_n = N / 16;
  const int tiles = (M / 16) * tiles_n;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (kIs16Bit<T>) {
    namespace wmma = nvcuda::wmma;
    using ALayout = std::conditional_t<A_COL, wmma::col_major, wmma::row_major>;
    using BLayout = std::conditional_t<B_COL, wmma::col_major, wmma::row_major>;
    (void)lane;
    for (int t = warp; t < tiles; t += kWarps) {
      const int tm = t / tiles_n, tn = t % tiles_n;
      float* cp = C + tm * 16 * ldc + tn * 16;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      if constexpr (ACC) {
        wmma::load_matrix_sync(acc, cp, ldc, wmma::mem_row_major);
      } else {
        wmma::fill_fragment(acc, 0.f);
      }
      for (int k = 0; k < K; k += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, ALayout> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, BLayout> b;
        const T* ap = A_COL ? A + k * lda + tm * 16 : A + tm * 16 * lda + k;
        const T* bp = B_COL ? B + tn * 16 * ldb + k : B + k * ldb + tn * 16;
        wmma::load_matrix_sync(a, ap, lda);
        wmma::load_matrix_sync(b, bp, ldb);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(cp, acc, ldc, wmma::mem_row_major);
    }
    return;
  }
#endif
  // FMA path: lane -> column (lane % 16) and 8 rows starting at (lane / 16) * 8.
  const int col = lane % 16;
  const int row0 = (lane / 16) * 8;
  for (int t = warp; t < tiles; t += kWarps) {
    const int tm = t / tiles_n, tn = t % tiles_n;
    const int n = tn * 16 + col;
    float acc[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] = ACC ? C[(tm * 16 + row0 + i) * ldc + n] : 0.f;
    for (int k = 0; k < K; ++k) {
      const float b = Cvt<T>::to_float(B_COL ? B[n * ldb + k] : B[k * ldb + n]);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int m = tm * 16 + row0 + i;
        acc[i] = fmaf(Cvt<T>::to_float(A_COL ? A[k * lda + m] : A[m * lda + k]), b, acc[i]);
      }
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) C[(tm * 16 + row0 + i) * ldc + n] = acc[i];
  }
}

// ---- helpers ------------------------------------------------------------------

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// dst[r][d] (ld) = src row r, column d for r < rows_valid and d < D; zero in
// the rest of the rows x Dp tile. src points at row 0 of the tile.
template <typename T>
__device__ __forceinline__ void load_tile(T* dst, int ld, const T* __restrict__ src, int64_t s_row, int64_t s_d,
                                          int rows_valid, int rows, int D, int Dp) {
  const T zero = Cvt<T>::from_float(0.f);
  for (int idx = threadIdx.x; idx < rows * Dp; idx += kThreads) {
    const int r = idx / Dp;
    const int d = idx - r * Dp;
    T val = zero;
    if (r < rows_valid && d < D) val = src[r * s_row + d * s_d];
    dst[r * ld + d] = val;
  }
}

// Which key source and rows a key tile index covers: tiles [0, nb1) are
// source 1, the following ones source 2.
struct KeyTile {
  int src;    // 1 or 2
  int start;  // first row within the source
  int count;  // valid rows in the tile (>= 1)
};

__device__ __forceinline__ KeyTile key_tile(int j, int BC, int Lk, int Lk2) {
  const int nb1 = (Lk + BC - 1) / BC;
  KeyTile t;
  if (j < nb1) {
    t.src = 1;
    t.start = j * BC;
    t.count = min(BC, Lk - t.start);
  } else {
    t.src = 2;
    t.start = (j - nb1) * BC;
    t.count = min(BC, Lk2 - t.start);
  }
  return t;
}

__host__ __device__ inline int num_key_tiles(int BC, int Lk, int Lk2) {
  return (Lk + BC - 1) / BC + (Lk2 + BC - 1) / BC;
}

// ---- forward -------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads) attn_fwd_kernel(const AttnFwdParams p) {
  using Cfg = Tiles<T>;
  constexpr int BR = Cfg::kFwdBR;
  constexpr int BC = Cfg::kFwdBC;
  constexpr int kRowsPerWarp = BR / kWarps;
  constexpr int kColsPerLane = BC / 32;

  extern __shared__ __align__(128) unsigned char smem[];
  const int D = p.D;
  const int Dp = round_up16(D);
  const FwdLayout L = fwd_layout<T>(Dp);
  T* sQ = reinterpret_cast<T*>(smem + L.q);
  T* sK = reinterpret_cast<T*>(smem + L.k);
  T* sV = reinterpret_cast<T*>(smem + L.v);
  float* sS = reinterpret_cast<float*>(smem + L.s);
  T* sP = reinterpret_cast<T*>(smem + L.p);
  float* sO = reinterpret_cast<float*>(smem + L.o);

  const int bh = blockIdx.x;
  const int b = bh / p.H;
  const int h = bh - b * p.H;
  const int q0 = blockIdx.y * BR;
  const int q_rows = min(BR, p.Lq - q0);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const float scale_log2 = p.scale * kLog2e;

  const T* q = static_cast<const T*>(p.q.ptr) + b * p.q.sb + h * p.q.sh + q0 * p.q.sl;
  load_tile<T>(sQ, L.ldT, q, p.q.sl, p.q.sd, q_rows, BR, D, Dp);
  for (int idx = threadIdx.x; idx < BR * L.ldO; idx += kThreads) sO[idx] = 0.f;

  // running max (log2 domain) and sum of the rows warp + i * kWarps
  float m_run[kRowsPerWarp];
  float l_run[kRowsPerWarp];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    m_run[i] = -INFINITY;
    l_run[i] = 0.f;
  }

  const int n_tiles = num_key_tiles(BC, p.Lk, p.Lk2);
  for (int j = 0; j < n_tiles; ++j) {
    const KeyTile kt = key_tile(j, BC, p.Lk, p.Lk2);
    const StridedInput ks = kt.src == 1 ? p.k : p.k2;
    const StridedInput vs = kt.src == 1 ? p.v : p.v2;
    __syncthreads();  // the previous P @ V is done with sK / sV
    load_tile<T>(sK, L.ldT, static_cast<const T*>(ks.ptr) + b * ks.sb + h * ks.sh + kt.start * ks.sl, ks.sl, ks.sd,
                 kt.count, BC, D, Dp);
    load_tile<T>(sV, L.ldT, static_cast<const T*>(vs.ptr) + b * vs.sb + h * vs.sh + kt.start * vs.sl, vs.sl, vs.sd,
                 kt.count, BC, D, Dp);
    __syncthreads();
    // S = Q @ K^T
    block_gemm<T, false, true, false>(sQ, L.ldT, sK, L.ldT, sS, L.ldS, BR, BC, Dp);
    __syncthreads();
    // online softmax: a warp owns rows warp, warp + kWarps, ...
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int r = warp + i * kWarps;
      float s[kColsPerLane];
      float mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < kColsPerLane; ++c) {
        const int col = lane + 32 * c;
        s[c] = col < kt.count ? sS[r * L.ldS + col] * scale_log2 : -INFINITY;
        mx = fmaxf(mx, s[c]);
      }
      mx = warp_max(mx);
      const float m_new = fmaxf(m_run[i], mx);
      const float alpha = exp2f(m_run[i] - m_new);  // 0 on the first tile
      float sum = 0.f;
#pragma unroll
      for (int c = 0; c < kColsPerLane; ++c) {
        const float pv = exp2f(s[c] - m_new);
        sum += pv;
        sP[r * L.ldP + lane + 32 * c] = Cvt<T>::from_float(pv);
      }
      sum = warp_sum(sum);
      l_run[i] = l_run[i] * alpha + sum;
      m_run[i] = m_new;
      for (int d = lane; d < Dp; d += 32) sO[r * L.ldO + d] *= alpha;
    }
    __syncthreads();
    // O += P @ V
    block_gemm<T, false, false, true>(sP, L.ldP, sV, L.ldT, sO, L.ldO, BR, Dp, BC);
  }
  __syncthreads();

  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = warp + i * kWarps;
    if (r >= q_rows) continue;
    const int row = q0 + r;
    const float inv = 1.f / l_run[i];
    T* orow = out + ((static_cast<int64_t>(b) * p.Lq + row) * p.H + h) * D;
    for (int d = lane; d < D; d += 32) orow[d] = Cvt<T>::from_float(sO[r * L.ldO + d] * inv);
    if (lane == 0) p.lse[static_cast<int64_t>(bh) * p.Lq + row] = (m_run[i] + log2f(l_run[i])) * kLn2;
  }
}

// ---- backward ------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads) attn_bwd_kernel(const AttnBwdParams p) {
  using Cfg = Tiles<T>;
  constexpr int BR = Cfg::kBwdBR;
  constexpr int BC = Cfg::kBwdBC;

  extern __shared__ __align__(128) unsigned char smem[];
  const int D = p.D;
  const int Dp = round_up16(D);
  const BwdLayout L = bwd_layout<T>(Dp);
  T* sK = reinterpret_cast<T*>(smem + L.k);
  T* sV = reinterpret_cast<T*>(smem + L.v);
  T* sQ = reinterpret_cast<T*>(smem + L.q);
  T* sdO = reinterpret_cast<T*>(smem + L.dout);
  float* sSt = reinterpret_cast<float*>(smem + L.st);    // S^T [BC][BR]
  float* sdPt = reinterpret_cast<float*>(smem + L.dpt);  // dP^T [BC][BR]
  float* sdQ = reinterpret_cast<float*>(smem + L.dq);    // dQ tile [BR][Dp], aliases sSt / sdPt
  T* sPt = reinterpret_cast<T*>(smem + L.pt);            // P^T [BC][BR]
  T* sdSt = reinterpret_cast<T*>(smem + L.dst);          // dS^T [BC][BR]
  float* sdK = reinterpret_cast<float*>(smem + L.dk);
  float* sdV = reinterpret_cast<float*>(smem + L.dv);
  float* sLse = reinterpret_cast<float*>(smem + L.lse);      // log2 domain
  float* sDelta = reinterpret_cast<float*>(smem + L.delta);

  const int bh = blockIdx.x;
  const int b = bh / p.H;
  const int h = bh - b * p.H;
  const KeyTile kt = key_tile(blockIdx.y, BC, p.Lk, p.Lk2);
  const StridedInput ks = kt.src == 1 ? p.k : p.k2;
  const StridedInput vs = kt.src == 1 ? p.v : p.v2;
  const float scale_log2 = p.scale * kLog2e;

  load_tile<T>(sK, L.ldT, static_cast<const T*>(ks.ptr) + b * ks.sb + h * ks.sh + kt.start * ks.sl, ks.sl, ks.sd,
               kt.count, BC, D, Dp);
  load_tile<T>(sV, L.ldT, static_cast<const T*>(vs.ptr) + b * vs.sb + h * vs.sh + kt.start * vs.sl, vs.sl, vs.sd,
               kt.count, BC, D, Dp);
  for (int idx = threadIdx.x; idx < BC * L.ldKV; idx += kThreads) {
    sdK[idx] = 0.f;
    sdV[idx] = 0.f;
  }

  const T* qb = static_cast<const T*>(p.q.ptr) + b * p.q.sb + h * p.q.sh;
  const T* dob = static_cast<const T*>(p.dout.ptr) + b * p.dout.sb + h * p.dout.sh;
  const float* lse = p.lse + static_cast<int64_t>(bh) * p.Lq;
  const float* delta = p.delta + static_cast<int64_t>(bh) * p.Lq;
  float* dq = p.dq_acc + b * p.dq_sb + h * p.dq_sh;

  const int n_q_tiles = (p.Lq + BR - 1) / BR;
  for (int i = 0; i < n_q_tiles; ++i) {
    const int q0 = i * BR;
    const int q_rows = min(BR, p.Lq - q0);
    __syncthreads();  // the previous tile's products and dQ adds are done
    load_tile<T>(sQ, L.ldT, qb + q0 * p.q.sl, p.q.sl, p.q.sd, q_rows, BR, D, Dp);
    load_tile<T>(sdO, L.ldT, dob + q0 * p.dout.sl, p.dout.sl, p.dout.sd, q_rows, BR, D, Dp);
    for (int r = threadIdx.x; r < BR; r += kThreads) {
      // rows past the end get P = 0: lse = +inf
      sLse[r] = r < q_rows ? lse[q0 + r] * kLog2e : INFINITY;
      sDelta[r] = r < q_rows ? delta[q0 + r] : 0.f;
    }
    __syncthreads();
    // S^T = K @ Q^T and dP^T = V @ dO^T, both [BC][BR]
    block_gemm<T, false, true, false>(sK, L.ldT, sQ, L.ldT, sSt, L.ldS, BC, BR, Dp);
    block_gemm<T, false, true, false>(sV, L.ldT, sdO, L.ldT, sdPt, L.ldS, BC, BR, Dp);
    __syncthreads();
    // P^T = exp(scale * S^T - lse), dS^T = P^T * (dP^T - delta); keys past the tile's end give 0
    for (int idx = threadIdx.x; idx < BC * BR; idx += kThreads) {
      const int c = idx / BR;
      const int r = idx - c * BR;
      float pv = 0.f, ds = 0.f;
      if (c < kt.count) {
        pv = exp2f(sSt[c * L.ldS + r] * scale_log2 - sLse[r]);
        ds = pv * (sdPt[c * L.ldS + r] - sDelta[r]);
      }
      sPt[c * L.ldP + r] = Cvt<T>::from_float(pv);
      sdSt[c * L.ldP + r] = Cvt<T>::from_float(ds);
    }
    __syncthreads();
    // dV += P^T @ dO, dK += dS^T @ Q (scaled at the end), dQ_tile = dS @ K
    block_gemm<T, false, false, true>(sPt, L.ldP, sdO, L.ldT, sdV, L.ldKV, BC, Dp, BR);
    block_gemm<T, false, false, true>(sdSt, L.ldP, sQ, L.ldT, sdK, L.ldKV, BC, Dp, BR);
    block_gemm<T, true, false, false>(sdSt, L.ldP, sK, L.ldT, sdQ, L.ldQ, BR, Dp, BC);
    __syncthreads();
    for (int idx = threadIdx.x; idx < q_rows * D; idx += kThreads) {
      const int r = idx / D;
      const int d = idx - r * D;
      atomicAdd(dq + (q0 + r) * p.dq_sl + d, sdQ[r * L.ldQ + d] * p.scale);
    }
  }
  __syncthreads();

  T* dk = static_cast<T*>(kt.src == 1 ? p.dk : p.dk2);
  T* dv = static_cast<T*>(kt.src == 1 ? p.dv : p.dv2);
  const int Ls = kt.src == 1 ? p.Lk : p.Lk2;
  for (int idx = threadIdx.x; idx < kt.count * D; idx += kThreads) {
    const int c = idx / D;
    const int d = idx - c * D;
    const int64_t off = ((static_cast<int64_t>(b) * Ls + kt.start + c) * p.H + h) * D + d;
    dk[off] = Cvt<T>::from_float(sdK[c * L.ldKV + d] * p.scale);
    dv[off] = Cvt<T>::from_float(sdV[c * L.ldKV + d]);
  }
}

}  // namespace kernels
}  // namespace xclip
