// Sparse (CSR) weight x dense activation kernels for CPUs, used by sparseforge.export.materialize.
//
// The weight W [N, K] is stored as CSR: row pointers (int64), column indices (uint16 when
// K <= 65536, else int32; passed as int16 / int32 tensors and reinterpreted) and fp32 values.
//
// Batched path (M > 1 columns): compute Y^T = W X^T with X^T laid out [K, M] (M = batch,
// padded to a multiple of 16). Every nonzero W[n, k] then does a broadcast-FMA over the
// contiguous row X^T[k, :], so the inner loop is a stream of full-width vector FMAs with
// no gathers; rows of W are split across OpenMP threads in blocks of 16 rows, each block
// accumulated in a small thread-local buffer and written back transposed (contiguous runs
// of 16 outputs per sample) with the bias and the output dtype conversion fused in.
//
// Batch-1 path (SpMV): memory-bound on the weight stream, so it reads 6 bytes per nonzero
// (fp32 value + uint16 index) and gathers the 16 inputs of 16 nonzeros at a time from x,
// which stays in L1.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifndef SF_PREFETCH
// prefetch distance in nonzeros for the batched path (4 measured 8-19 % faster than none and
// than 8 on a 4096 x 4096 layer at batch 64, 90-95 % sparse, one thread)
#define SF_PREFETCH 4
#endif

namespace {

constexpr int64_t kRowBlock = 16;  // output rows per work item (one 64-byte output run)

inline float bf16_to_f32(uint16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {  // round to nearest even, like torch
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// acc[0:Mp] += sum_j vals[j] * XT[cols[j], 0:Mp] for one CSR row (Mp a multiple of 16).
template <typename Idx>
inline void row_times_xt(const Idx* cols, const float* vals, int64_t nnz, const float* XT, int64_t Mp,
                         float* acc) {
#if defined(__AVX512F__)
  int64_t m = 0;
  // 64 columns at a time, two independent accumulator sets (even / odd nonzeros) so that
  // 8 FMA chains hide the FMA latency
  for (; m + 64 <= Mp; m += 64) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(), b2 = _mm512_setzero_ps(), b3 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 2 <= nnz; j += 2) {
#if SF_PREFETCH > 0
      // the X^T rows of nonzeros a few steps ahead are random L2 lines: request them early
      if (j + SF_PREFETCH + 1 < nnz) {
        const char* p0 = reinterpret_cast<const char*>(XT + static_cast<int64_t>(cols[j + SF_PREFETCH]) * Mp + m);
        const char* p1 = reinterpret_cast<const char*>(XT + static_cast<int64_t>(cols[j + SF_PREFETCH + 1]) * Mp + m);
        for (int l = 0; l < 256; l += 64) {
          _mm_prefetch(p0 + l, _MM_HINT_T0);
          _mm_prefetch(p1 + l, _MM_HINT_T0);
        }
      }
#endif
      const float* x0 = XT + static_cast<int64_t>(cols[j]) * Mp + m;
      const float* x1 = XT + static_cast<int64_t>(cols[j + 1]) * Mp + m;
      const __m512 v0 = _mm512_set1_ps(vals[j]);
      const __m512 v1 = _mm512_set1_ps(vals[j + 1]);
      a0 = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x0), a0);
      a1 = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x0 + 16), a1);
      a2 = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x0 + 32), a2);
      a3 = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x0 + 48), a3);
      b0 = _mm512_fmadd_ps(v1, _mm512_loadu_ps(x1), b0);
      b1 = _mm512_fmadd_ps(v1, _mm512_loadu_ps(x1 + 16), b1);
      b2 = _mm512_fmadd_ps(v1, _mm512_loadu_ps(x1 + 32), b2);
      b3 = _mm512_fmadd_ps(v1, _mm512_loadu_ps(x1 + 48), b3);
    }
    if (j < nnz) {
      const float* x0 = XT + static_cast<int64_t>(cols[j]) * Mp + m;
      const __m512 v0 = _mm512_set1_ps(vals[j]);
      a0 = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x0), a0);
      a1 = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x0 + 16), a1);
      a2 = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x0 + 32), a2);
      a3 = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x0 + 48), a3);
    }
    _mm512_storeu_ps(acc + m, _mm512_add_ps(a0, b0));
    _mm512_storeu_ps(acc + m + 16, _mm512_add_ps(a1, b1));
    _mm512_storeu_ps(acc + m + 32, _mm512_add_ps(a2, b2));
    _mm512_storeu_ps(acc + m + 48, _mm512_add_ps(a3, b3));
  }
  for (; m < Mp; m += 16) {
    __m512 a0 = _mm512_setzero_ps(), b0 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 2 <= nnz; j += 2) {
      a0 = _mm512_fmadd_ps(_mm512_set1_ps(vals[j]), _mm512_loadu_ps(XT + static_cast<int64_t>(cols[j]) * Mp + m), a0);
      b0 = _mm512_fmadd_ps(_mm512_set1_ps(vals[j + 1]), _mm512_loadu_ps(XT + static_cast<int64_t>(cols[j + 1]) * Mp + m), b0);
    }
    if (j < nnz)
      a0 = _mm512_fmadd_ps(_mm512_set1_ps(vals[j]), _mm512_loadu_ps(XT + static_cast<int64_t>(cols[j]) * Mp + m), a0);
    _mm512_storeu_ps(acc + m, _mm512_add_ps(a0, b0));
  }
#else
  for (int64_t m = 0; m < Mp; ++m) acc[m] = 0.f;
  for (int64_t j = 0; j < nnz; ++j) {
    const float v = vals[j];
    const float* x = XT + static_cast<int64_t>(cols[j]) * Mp;
#pragma omp simd
    for (int64_t m = 0; m < Mp; ++m) acc[m] += v * x[m];
  }
#endif
}

// dot(W[row], x) for one CSR row; x is a dense fp32 vector.
template <typename Idx>
inline float row_dot(const Idx* cols, const float* vals, int64_t nnz, const float* x) {
#if defined(__AVX512F__)
  __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 32 <= nnz; j += 32) {
    __m512i i0, i1;
    if constexpr (sizeof(Idx) == 2) {
      i0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(cols + j)));
      i1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(cols + j + 16)));
    } else {
      i0 = _mm512_loadu_si512(cols + j);
      i1 = _mm512_loadu_si512(cols + j + 16);
    }
    a = _mm512_fmadd_ps(_mm512_loadu_ps(vals + j), _mm512_i32gather_ps(i0, x, 4), a);
    b = _mm512_fmadd_ps(_mm512_loadu_ps(vals + j + 16), _mm512_i32gather_ps(i1, x, 4), b);
  }
  a = _mm512_add_ps(a, b);
  for (; j + 16 <= nnz; j += 16) {
    __m512i i0;
    if constexpr (sizeof(Idx) == 2)
      i0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(cols + j)));
    else
      i0 = _mm512_loadu_si512(cols + j);
    a = _mm512_fmadd_ps(_mm512_loadu_ps(vals + j), _mm512_i32gather_ps(i0, x, 4), a);
  }
  float s = _mm512_reduce_add_ps(a);
  for (; j < nnz; ++j) s += vals[j] * x[cols[j]];
  return s;
#else
  float s = 0.f;
  for (int64_t j = 0; j < nnz; ++j) s += vals[j] * x[cols[j]];
  return s;
#endif
}

template <typename Idx>
void spmm_t_impl(const int64_t* rowptr, const Idx* cols, const float* vals, int64_t N, const float* XT, int64_t Mp,
                 float* YT, int threads) {
  const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t r1 = std::min(N, (blk + 1) * kRowBlock);
    for (int64_t r = blk * kRowBlock; r < r1; ++r)
      row_times_xt(cols + rowptr[r], vals + rowptr[r], rowptr[r + 1] - rowptr[r], XT, Mp, YT + r * Mp);
  }
}

// Linear layer y[M, N] = x[M, K] W^T + bias, x and y fp32 or bf16 (T = float or uint16_t).
template <typename Idx, typename T>
void linear_impl(const int64_t* rowptr, const Idx* cols, const float* vals, const float* bias, int64_t N, int64_t K,
                 const T* x, int64_t M, T* y, int threads) {
  auto load = [](T v) -> float {
    if constexpr (std::is_same_v<T, float>) return v; else return bf16_to_f32(v);
  };
  auto store = [](float v) -> T {
    if constexpr (std::is_same_v<T, float>) return v; else return f32_to_bf16(v);
  };
  if (M == 1) {
    const float* xf;
    std::vector<float> xbuf;
    if constexpr (std::is_same_v<T, float>) {
      xf = x;
    } else {
      xbuf.resize(K);
      for (int64_t k = 0; k < K; ++k) xbuf[k] = load(x[k]);
      xf = xbuf.data();
    }
#pragma omp parallel for schedule(static, 64) num_threads(threads)
    for (int64_t r = 0; r < N; ++r) {
      float s = row_dot(cols + rowptr[r], vals + rowptr[r], rowptr[r + 1] - rowptr[r], xf);
      y[r] = store(bias ? s + bias[r] : s);
    }
    return;
  }
  const int64_t Mp = (M + 15) / 16 * 16;
  // X^T [K, Mp], zero-padded columns; a 16 x 16 tiled transpose keeps both sides cache-friendly
  std::vector<float> XT(static_cast<size_t>(K) * Mp);
  const int64_t kt = (K + 15) / 16;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t kb = 0; kb < kt; ++kb) {
    const int64_t k0 = kb * 16, k1 = std::min(K, k0 + 16);
    for (int64_t m0 = 0; m0 < Mp; m0 += 16) {
      for (int64_t k = k0; k < k1; ++k) {
        float* dst = XT.data() + k * Mp + m0;
        for (int64_t m = m0; m < m0 + 16; ++m) dst[m - m0] = m < M ? load(x[m * K + k]) : 0.f;
      }
    }
  }
  const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> acc(static_cast<size_t>(kRowBlock) * Mp);
#pragma omp for schedule(dynamic, 4)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t r0 = blk * kRowBlock, r1 = std::min(N, r0 + kRowBlock);
      for (int64_t r = r0; r < r1; ++r)
        row_times_xt(cols + rowptr[r], vals + rowptr[r], rowptr[r + 1] - rowptr[r], XT.data(), Mp,
                     acc.data() + (r - r0) * Mp);
      for (int64_t m = 0; m < M; ++m) {
        T* out = y + m * N;
        for (int64_t r = r0; r < r1; ++r) {
          const float v = acc[(r - r0) * Mp + m];
          out[r] = store(bias ? v + bias[r] : v);
        }
      }
    }
  }
}

// Block-sparse (BSR) linear: blocks of bh x bw (bh a multiple of 8) stored row-major in vals
// [nblocks, bh, bw]; browptr over block rows (int64), bcols block-column indices (int32).
// Batched: each X^T row segment (16 samples) is loaded once and used by 8 output rows of the
// block (8 FMAs per load instead of 1 for CSR), so the product is FMA-bound, not L2-bound.
// Batch 1: every block row is a dense dot product over contiguous weights and inputs.
template <typename T>
void bsr_linear_impl(const int64_t* browptr, const int32_t* bcols, const float* vals, const float* bias, int64_t N,
                     int64_t K, int64_t bh, int64_t bw, const T* x, int64_t M, T* y, int threads) {
  auto load = [](T v) -> float {
    if constexpr (std::is_same_v<T, float>) return v; else return bf16_to_f32(v);
  };
  auto store = [](float v) -> T {
    if constexpr (std::is_same_v<T, float>) return v; else return f32_to_bf16(v);
  };
  const int64_t nbr = N / bh;
  const int64_t bsz = bh * bw;
  if (M == 1) {
    std::vector<float> xbuf;
    const float* xf;
    if constexpr (std::is_same_v<T, float>) {
      xf = x;
    } else {
      xbuf.resize(K);
      for (int64_t k = 0; k < K; ++k) xbuf[k] = load(x[k]);
      xf = xbuf.data();
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t R = 0; R < nbr; ++R) {
      for (int64_t i = 0; i < bh; ++i) {
        float s = 0.f;
        for (int64_t b = browptr[R]; b < browptr[R + 1]; ++b) {
          const float* w = vals + b * bsz + i * bw;
          const float* xs = xf + static_cast<int64_t>(bcols[b]) * bw;
#pragma omp simd reduction(+ : s)
          for (int64_t k = 0; k < bw; ++k) s += w[k] * xs[k];
        }
        const int64_t r = R * bh + i;
        y[r] = store(bias ? s + bias[r] : s);
      }
    }
    return;
  }
  const int64_t Mp = (M + 15) / 16 * 16;
  std::vector<float> XT(static_cast<size_t>(K) * Mp);
  const int64_t kt = (K + 15) / 16;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t kb = 0; kb < kt; ++kb) {
    const int64_t k0 = kb * 16, k1 = std::min(K, k0 + 16);
    for (int64_t m0 = 0; m0 < Mp; m0 += 16)
      for (int64_t k = k0; k < k1; ++k) {
        float* dst = XT.data() + k * Mp + m0;
        for (int64_t m = m0; m < m0 + 16; ++m) dst[m - m0] = m < M ? load(x[m * K + k]) : 0.f;
      }
  }
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> acc(static_cast<size_t>(bh) * Mp);
#pragma omp for schedule(dynamic, 1)
    for (int64_t R = 0; R < nbr; ++R) {
      for (int64_t g = 0; g < bh; g += 8) {
        for (int64_t m = 0; m < Mp; m += 16) {
#if defined(__AVX512F__)
          __m512 a[8];
          for (int i = 0; i < 8; ++i) a[i] = _mm512_setzero_ps();
          for (int64_t b = browptr[R]; b < browptr[R + 1]; ++b) {
            const float* w = vals + b * bsz + g * bw;
            const float* xs = XT.data() + static_cast<int64_t>(bcols[b]) * bw * Mp + m;
            for (int64_t k = 0; k < bw; ++k) {
              const __m512 xv = _mm512_loadu_ps(xs + k * Mp);
              for (int i = 0; i < 8; ++i) a[i] = _mm512_fmadd_ps(_mm512_set1_ps(w[i * bw + k]), xv, a[i]);
            }
          }
          for (int i = 0; i < 8; ++i) _mm512_storeu_ps(acc.data() + (g + i) * Mp + m, a[i]);
#else
          for (int i = 0; i < 8; ++i)
            for (int64_t mm = m; mm < m + 16; ++mm) acc[(g + i) * Mp + mm] = 0.f;
          for (int64_t b = browptr[R]; b < browptr[R + 1]; ++b) {
            const float* w = vals + b * bsz + g * bw;
            const float* xs = XT.data() + static_cast<int64_t>(bcols[b]) * bw * Mp + m;
            for (int64_t k = 0; k < bw; ++k)
              for (int i = 0; i < 8; ++i)
                for (int64_t mm = 0; mm < 16; ++mm) acc[(g + i) * Mp + m + mm] += w[i * bw + k] * xs[k * Mp + mm];
          }
#endif
        }
      }
      const int64_t r0 = R * bh;
      for (int64_t m = 0; m < M; ++m) {
        T* out = y + m * N;
        for (int64_t i = 0; i < bh; ++i) {
          const float v = acc[i * Mp + m];
          out[r0 + i] = store(bias ? v + bias[r0 + i] : v);
        }
      }
    }
  }
}

void check_csr(const torch::Tensor& rowptr, const torch::Tensor& cols, const torch::Tensor& vals) {
  TORCH_CHECK(rowptr.dtype() == torch::kInt64 && rowptr.is_contiguous() && rowptr.dim() == 1,
              "rowptr must be a contiguous 1-D int64 tensor");
  TORCH_CHECK((cols.dtype() == torch::kInt16 || cols.dtype() == torch::kInt32) && cols.is_contiguous() && cols.dim() == 1,
              "cols must be a contiguous 1-D int16 (read as uint16) or int32 tensor");
  TORCH_CHECK(vals.dtype() == torch::kFloat32 && vals.is_contiguous() && vals.dim() == 1,
              "vals must be a contiguous 1-D float32 tensor");
  TORCH_CHECK(cols.numel() == vals.numel(), "cols and vals must have the same length");
  TORCH_CHECK(!rowptr.is_cuda() && !cols.is_cuda() && !vals.is_cuda(), "CPU tensors only");
}

}  // namespace

// y = x W^T + bias for x [M, K] (fp32 or bf16, contiguous); returns y [M, N] in x's dtype.
torch::Tensor csr_linear(torch::Tensor rowptr, torch::Tensor cols, torch::Tensor vals, c10::optional<torch::Tensor> bias,
                         int64_t K, torch::Tensor x) {
  check_csr(rowptr, cols, vals);
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K, "x must be [M, ", K, "]");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16, "x must be float32 or bfloat16");
  x = x.contiguous();
  const int64_t N = rowptr.numel() - 1, M = x.size(0);
  const float* b = nullptr;
  torch::Tensor bf;
  if (bias.has_value() && bias->defined()) {
    bf = bias->to(torch::kFloat32).contiguous();
    TORCH_CHECK(bf.numel() == N, "bias must have ", N, " elements");
    b = bf.data_ptr<float>();
  }
  auto y = torch::empty({M, N}, x.options());
  if (M == 0) return y;
  const int threads = at::get_num_threads();
  const int64_t* rp = rowptr.data_ptr<int64_t>();
  const float* v = vals.data_ptr<float>();
  const bool bf16 = x.scalar_type() == torch::kBFloat16;
  auto run = [&](auto* c) {
    using Idx = std::remove_const_t<std::remove_pointer_t<decltype(c)>>;
    if (bf16)
      linear_impl<Idx, uint16_t>(rp, c, v, b, N, K, reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), M,
                                 reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()), threads);
    else
      linear_impl<Idx, float>(rp, c, v, b, N, K, x.data_ptr<float>(), M, y.data_ptr<float>(), threads);
  };
  if (cols.scalar_type() == torch::kInt16)
    run(reinterpret_cast<const uint16_t*>(cols.data_ptr<int16_t>()));
  else
    run(reinterpret_cast<const int32_t*>(cols.data_ptr<int32_t>()));
  return y;
}

// Y^T [N, M] = W X^T for X^T [K, M] fp32 (the unfolded input of a convolution is already in
// this layout). M is padded to a multiple of 16 internally.
torch::Tensor csr_spmm_t(torch::Tensor rowptr, torch::Tensor cols, torch::Tensor vals, torch::Tensor XT) {
  check_csr(rowptr, cols, vals);
  TORCH_CHECK(XT.dim() == 2 && XT.scalar_type() == torch::kFloat32, "XT must be a 2-D float32 tensor");
  const int64_t N = rowptr.numel() - 1, K = XT.size(0), M = XT.size(1);
  const int64_t Mp = (M + 15) / 16 * 16;
  torch::Tensor xp = XT.contiguous();
  if (Mp != M) xp = torch::constant_pad_nd(xp, {0, Mp - M}, 0.0);
  auto yp = torch::empty({N, Mp}, XT.options());
  if (N == 0 || Mp == 0) return yp.narrow(1, 0, M);
  const int threads = at::get_num_threads();
  if (cols.scalar_type() == torch::kInt16)
    spmm_t_impl(rowptr.data_ptr<int64_t>(), reinterpret_cast<const uint16_t*>(cols.data_ptr<int16_t>()),
                vals.data_ptr<float>(), N, xp.data_ptr<float>(), Mp, yp.data_ptr<float>(), threads);
  else
    spmm_t_impl(rowptr.data_ptr<int64_t>(), cols.data_ptr<int32_t>(), vals.data_ptr<float>(), N,
                xp.data_ptr<float>(), Mp, yp.data_ptr<float>(), threads);
  (void)K;
  return Mp == M ? yp : yp.narrow(1, 0, M).contiguous();
}

// y = x W^T + bias with W block-sparse: browptr int64 [N/bh + 1], bcols int32, vals fp32 [nblocks, bh, bw].
torch::Tensor bsr_linear(torch::Tensor browptr, torch::Tensor bcols, torch::Tensor vals, c10::optional<torch::Tensor> bias,
                         int64_t K, torch::Tensor x) {
  TORCH_CHECK(browptr.dtype() == torch::kInt64 && browptr.is_contiguous() && browptr.dim() == 1, "browptr: 1-D int64");
  TORCH_CHECK(bcols.dtype() == torch::kInt32 && bcols.is_contiguous() && bcols.dim() == 1, "bcols: 1-D int32");
  TORCH_CHECK(vals.dtype() == torch::kFloat32 && vals.is_contiguous() && vals.dim() == 3, "vals: [nblocks, bh, bw] fp32");
  TORCH_CHECK(vals.size(0) == bcols.numel(), "one block per block-column index");
  const int64_t bh = vals.size(1), bw = vals.size(2);
  TORCH_CHECK(bh % 8 == 0 && bw >= 1 && K % bw == 0, "block rows must be a multiple of 8 and block columns divide K");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K, "x must be [M, ", K, "]");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16, "x must be float32 or bfloat16");
  x = x.contiguous();
  const int64_t N = (browptr.numel() - 1) * bh, M = x.size(0);
  const float* b = nullptr;
  torch::Tensor bf;
  if (bias.has_value() && bias->defined()) {
    bf = bias->to(torch::kFloat32).contiguous();
    TORCH_CHECK(bf.numel() == N, "bias must have ", N, " elements");
    b = bf.data_ptr<float>();
  }
  auto y = torch::empty({M, N}, x.options());
  if (M == 0) return y;
  const int threads = at::get_num_threads();
  if (x.scalar_type() == torch::kBFloat16)
    bsr_linear_impl<uint16_t>(browptr.data_ptr<int64_t>(), bcols.data_ptr<int32_t>(), vals.data_ptr<float>(), b, N, K, bh,
                              bw, reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), M,
                              reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()), threads);
  else
    bsr_linear_impl<float>(browptr.data_ptr<int64_t>(), bcols.data_ptr<int32_t>(), vals.data_ptr<float>(), b, N, K, bh,
                           bw, x.data_ptr<float>(), M, y.data_ptr<float>(), threads);
  return y;
}

// Which vector instruction set this build uses (reported in the layer decisions).
std::string isa() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__)
  return "avx2 (auto-vectorised)";
#else
  return "scalar (auto-vectorised)";
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("csr_linear", &csr_linear, "y = x W^T + b with W in CSR (fp32 values, uint16/int32 columns)");
  m.def("csr_spmm_t", &csr_spmm_t, "Y^T = W X^T with W in CSR and X^T [K, M] fp32");
  m.def("bsr_linear", &bsr_linear, "y = x W^T + b with W block-sparse (bh a multiple of 8)");
  m.def("isa", &isa, "vector instruction set of this build");
}
