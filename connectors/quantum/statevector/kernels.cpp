#include "connectors/quantum/statevector/kernels.hpp"

#include <algorithm>
#include <cmath>

#if defined(__x86_64__)
#include <immintrin.h>
#define SCIGATE_X86 1
#endif

namespace scigate::quantum {

bool simd_available() {
#if SCIGATE_X86
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

MatrixShape classify(std::span<const std::complex<double>> m, std::size_t dim) {
  bool diagonal = true, permutation = true;
  for (std::size_t c = 0; c < dim; ++c) {
    int nonzero = 0;
    for (std::size_t r = 0; r < dim; ++r) {
      if (m[r * dim + c] == 0.0) continue;
      ++nonzero;
      if (r != c) diagonal = false;
    }
    if (nonzero != 1) permutation = false;
  }
  if (diagonal && permutation) return MatrixShape::kDiagonal;
  return permutation ? MatrixShape::kPermutation : MatrixShape::kDense;
}

template <typename T>
PreparedGate<T> prepare_gate(int num_qubits, const std::vector<int>& controls, const std::vector<int>& targets,
                             std::span<const std::complex<double>> matrix) {
  PreparedGate<T> g;
  g.targets = targets;
  for (int c : controls) g.control_mask |= uint64_t{1} << c;
  g.sorted_fixed = targets;
  g.sorted_fixed.insert(g.sorted_fixed.end(), controls.begin(), controls.end());
  std::sort(g.sorted_fixed.begin(), g.sorted_fixed.end());
  std::size_t dim = std::size_t{1} << targets.size();
  g.offsets.resize(dim);
  for (std::size_t j = 0; j < dim; ++j) {
    uint64_t off = 0;
    for (std::size_t b = 0; b < targets.size(); ++b)
      if ((j >> b) & 1) off |= uint64_t{1} << targets[b];
    g.offsets[j] = off;
  }
  g.matrix.resize(matrix.size());
  for (std::size_t i = 0; i < matrix.size(); ++i) g.matrix[i] = std::complex<T>(matrix[i]);
  g.shape = classify(matrix, dim);
  if (g.shape == MatrixShape::kPermutation) {
    g.permutation.resize(dim);
    g.phases.resize(dim);
    for (std::size_t c = 0; c < dim; ++c)
      for (std::size_t r = 0; r < dim; ++r)
        if (matrix[r * dim + c] != 0.0) {
          g.permutation[c] = static_cast<int>(r);
          g.phases[c] = std::complex<T>(matrix[r * dim + c]);
        }
  }
  g.diagonal_full = g.shape == MatrixShape::kDiagonal && controls.empty();
  g.dense_1q_fast = g.shape == MatrixShape::kDense && controls.empty() && targets.size() == 1;
  int skipped = g.diagonal_full ? 0 : static_cast<int>(g.sorted_fixed.size());
  g.iterations = uint64_t{1} << (num_qubits - skipped);
  return g;
}

namespace {

// --- portable kernels ------------------------------------------------------------------------

// Complex multiply written out: std::complex's operator* checks for NaN/inf on every product
// (C99 Annex G), which costs a branch per amplitude.
template <typename T>
inline std::complex<T> mul(std::complex<T> a, std::complex<T> b) {
  return {a.real() * b.real() - a.imag() * b.imag(), a.real() * b.imag() + a.imag() * b.real()};
}

// The 2x2 matrix on `run` amplitude pairs (a[j], b[j]): the inner loop of the portable
// one-target kernels.
template <typename T>
inline void butterfly_run(std::complex<T>* a, std::complex<T>* b, uint64_t run, std::complex<T> m00,
                          std::complex<T> m01, std::complex<T> m10, std::complex<T> m11) {
  for (uint64_t j = 0; j < run; ++j) {
    std::complex<T> x = a[j], y = b[j];
    a[j] = mul(m00, x) + mul(m01, y);
    b[j] = mul(m10, x) + mul(m11, y);
  }
}

template <typename T>
void dense_1q_portable(std::complex<T>* psi, const PreparedGate<T>& g, uint64_t begin, uint64_t end) {
  const int t = g.targets[0];
  const uint64_t stride = uint64_t{1} << t;
  const std::complex<T> m00 = g.matrix[0], m01 = g.matrix[1], m10 = g.matrix[2], m11 = g.matrix[3];
  uint64_t k = begin;
  while (k < end) {
    uint64_t low = k & (stride - 1);
    uint64_t run = std::min(end - k, stride - low);
    std::complex<T>* a = psi + (((k >> t) << (t + 1)) | low);
    std::complex<T>* b = a + stride;
    butterfly_run(a, b, run, m00, m01, m10, m11);
    k += run;
  }
}

template <typename T>
void diagonal_full_portable(std::complex<T>* psi, const PreparedGate<T>& g, uint64_t begin, uint64_t end) {
  const std::size_t dim = g.offsets.size();
  uint64_t mask = 0;
  for (auto o : g.offsets) mask |= o;
  std::vector<std::complex<T>> d(dim);
  for (std::size_t j = 0; j < dim; ++j) d[j] = g.matrix[j * dim + j];
  if (g.targets.size() == 1) {
    const int t = g.targets[0];
    for (uint64_t i = begin; i < end; ++i) psi[i] = mul(psi[i], d[(i >> t) & 1]);
    return;
  }
  for (uint64_t i = begin; i < end; ++i) {
    std::size_t j = 0;
    for (std::size_t b = 0; b < g.targets.size(); ++b) j |= ((i >> g.targets[b]) & 1) << b;
    psi[i] = mul(psi[i], d[j]);
  }
}

// Any gate with one target and any controls (cx, cz, cp, ccx, c4x, x, y, ...): the iteration
// skips the fixed bits, and amplitudes between the lowest fixed bit and bit 0 are contiguous, so
// each run of 2^lowest iterations is a straight loop over two streams.
template <typename T>
void single_target_portable(std::complex<T>* psi, const PreparedGate<T>& g, uint64_t begin, uint64_t end) {
  const uint64_t stride = uint64_t{1} << g.targets[0];
  const uint64_t run_len = uint64_t{1} << g.sorted_fixed[0];
  const std::complex<T> m00 = g.matrix[0], m01 = g.matrix[1], m10 = g.matrix[2], m11 = g.matrix[3];
  const std::span<const int> fixed(g.sorted_fixed);
  uint64_t k = begin;
  while (k < end) {
    uint64_t run = std::min(end - k, run_len - (k & (run_len - 1)));
    std::complex<T>* a = psi + (insert_zero_bits(k, fixed) | g.control_mask);
    std::complex<T>* b = a + stride;
    butterfly_run(a, b, run, m00, m01, m10, m11);
    k += run;
  }
}

template <typename T>
void general_portable(std::complex<T>* psi, const PreparedGate<T>& g, uint64_t begin, uint64_t end) {
  const std::size_t dim = g.offsets.size();
  std::complex<T> in[64], out[64];
  for (uint64_t k = begin; k < end; ++k) {
    uint64_t base = insert_zero_bits(k, g.sorted_fixed) | g.control_mask;
    switch (g.shape) {
      case MatrixShape::kDiagonal:
        for (std::size_t j = 0; j < dim; ++j) psi[base | g.offsets[j]] = mul(psi[base | g.offsets[j]], g.matrix[j * dim + j]);
        break;
      case MatrixShape::kPermutation:
        for (std::size_t j = 0; j < dim; ++j) in[j] = psi[base | g.offsets[j]];
        for (std::size_t j = 0; j < dim; ++j) psi[base | g.offsets[g.permutation[j]]] = mul(g.phases[j], in[j]);
        break;
      case MatrixShape::kDense:
        for (std::size_t j = 0; j < dim; ++j) in[j] = psi[base | g.offsets[j]];
        for (std::size_t r = 0; r < dim; ++r) {
          std::complex<T> acc = 0;
          const std::complex<T>* row = g.matrix.data() + r * dim;
          for (std::size_t c = 0; c < dim; ++c) acc += mul(row[c], in[c]);
          out[r] = acc;
        }
        for (std::size_t j = 0; j < dim; ++j) psi[base | g.offsets[j]] = out[j];
        break;
    }
  }
}

#if SCIGATE_X86
// --- AVX2/FMA kernels (complex<double>) ------------------------------------------------------
// One __m256d holds two complex doubles [re0, im0, re1, im1].

__attribute__((target("avx2,fma"))) inline __m256d cmul(__m256d x, __m256d re, __m256d im) {
  // x * (re + i im) = [xr*re - xi*im, xi*re + xr*im]
  __m256d swapped = _mm256_permute_pd(x, 0b0101);
  return _mm256_fmaddsub_pd(x, re, _mm256_mul_pd(swapped, im));
}

__attribute__((target("avx2,fma"))) void dense_1q_avx2(std::complex<double>* psi, const PreparedGate<double>& g,
                                                        uint64_t begin, uint64_t end) {
  const int t = g.targets[0];
  const uint64_t stride = uint64_t{1} << t;
  const auto& m = g.matrix;
  double* p = reinterpret_cast<double*>(psi);
  if (t == 0) {
    // The pair (a, b) is adjacent: one register holds both.
    const __m256d c1re = _mm256_setr_pd(m[0].real(), m[0].real(), m[2].real(), m[2].real());
    const __m256d c1im = _mm256_setr_pd(m[0].imag(), m[0].imag(), m[2].imag(), m[2].imag());
    const __m256d c2re = _mm256_setr_pd(m[1].real(), m[1].real(), m[3].real(), m[3].real());
    const __m256d c2im = _mm256_setr_pd(m[1].imag(), m[1].imag(), m[3].imag(), m[3].imag());
    for (uint64_t k = begin; k < end; ++k) {
      __m256d v = _mm256_loadu_pd(p + 4 * k);
      __m256d aa = _mm256_permute2f128_pd(v, v, 0x00);
      __m256d bb = _mm256_permute2f128_pd(v, v, 0x11);
      _mm256_storeu_pd(p + 4 * k, _mm256_add_pd(cmul(aa, c1re, c1im), cmul(bb, c2re, c2im)));
    }
    return;
  }
  const __m256d m00r = _mm256_set1_pd(m[0].real()), m00i = _mm256_set1_pd(m[0].imag());
  const __m256d m01r = _mm256_set1_pd(m[1].real()), m01i = _mm256_set1_pd(m[1].imag());
  const __m256d m10r = _mm256_set1_pd(m[2].real()), m10i = _mm256_set1_pd(m[2].imag());
  const __m256d m11r = _mm256_set1_pd(m[3].real()), m11i = _mm256_set1_pd(m[3].imag());
  uint64_t k = begin;
  while (k < end) {
    uint64_t low = k & (stride - 1);
    uint64_t run = std::min(end - k, stride - low);
    double* a = p + 2 * (((k >> t) << (t + 1)) | low);
    double* b = a + 2 * stride;
    uint64_t j = 0;
    for (; j + 2 <= run; j += 2) {
      __m256d x = _mm256_loadu_pd(a + 2 * j), y = _mm256_loadu_pd(b + 2 * j);
      __m256d na = _mm256_add_pd(cmul(x, m00r, m00i), cmul(y, m01r, m01i));
      __m256d nb = _mm256_add_pd(cmul(x, m10r, m10i), cmul(y, m11r, m11i));
      _mm256_storeu_pd(a + 2 * j, na);
      _mm256_storeu_pd(b + 2 * j, nb);
    }
    for (; j < run; ++j) {
      auto* ca = reinterpret_cast<std::complex<double>*>(a) + j;
      auto* cb = reinterpret_cast<std::complex<double>*>(b) + j;
      std::complex<double> x = *ca, y = *cb;
      *ca = mul(m[0], x) + mul(m[1], y);
      *cb = mul(m[2], x) + mul(m[3], y);
    }
    k += run;
  }
}

__attribute__((target("avx2,fma"))) void diagonal_1q_avx2(std::complex<double>* psi, const PreparedGate<double>& g,
                                                           uint64_t begin, uint64_t end) {
  const int t = g.targets[0];
  const auto d0 = g.matrix[0], d1 = g.matrix[3];
  double* p = reinterpret_cast<double*>(psi);
  if (t == 0) {
    const __m256d re = _mm256_setr_pd(d0.real(), d0.real(), d1.real(), d1.real());
    const __m256d im = _mm256_setr_pd(d0.imag(), d0.imag(), d1.imag(), d1.imag());
    uint64_t i = begin;
    if (i & 1) psi[i] = mul(psi[i], d1), ++i;
    for (; i + 2 <= end; i += 2) _mm256_storeu_pd(p + 2 * i, cmul(_mm256_loadu_pd(p + 2 * i), re, im));
    for (; i < end; ++i) psi[i] = mul(psi[i], (i & 1) ? d1 : d0);
    return;
  }
  const uint64_t stride = uint64_t{1} << t;
  uint64_t i = begin;
  while (i < end) {
    uint64_t run = std::min(end - i, stride - (i & (stride - 1)));
    auto d = ((i >> t) & 1) ? d1 : d0;
    const __m256d re = _mm256_set1_pd(d.real()), im = _mm256_set1_pd(d.imag());
    uint64_t j = 0;
    for (; j + 2 <= run; j += 2) _mm256_storeu_pd(p + 2 * (i + j), cmul(_mm256_loadu_pd(p + 2 * (i + j)), re, im));
    for (; j < run; ++j) psi[i + j] = mul(psi[i + j], d);
    i += run;
  }
}

__attribute__((target("avx2,fma"))) void single_target_avx2(std::complex<double>* psi, const PreparedGate<double>& g,
                                                             uint64_t begin, uint64_t end) {
  const uint64_t stride = uint64_t{1} << g.targets[0];
  const uint64_t run_len = uint64_t{1} << g.sorted_fixed[0];
  const auto& m = g.matrix;
  const __m256d m00r = _mm256_set1_pd(m[0].real()), m00i = _mm256_set1_pd(m[0].imag());
  const __m256d m01r = _mm256_set1_pd(m[1].real()), m01i = _mm256_set1_pd(m[1].imag());
  const __m256d m10r = _mm256_set1_pd(m[2].real()), m10i = _mm256_set1_pd(m[2].imag());
  const __m256d m11r = _mm256_set1_pd(m[3].real()), m11i = _mm256_set1_pd(m[3].imag());
  const std::span<const int> fixed(g.sorted_fixed);
  uint64_t k = begin;
  while (k < end) {
    uint64_t run = std::min(end - k, run_len - (k & (run_len - 1)));
    double* a = reinterpret_cast<double*>(psi + (insert_zero_bits(k, fixed) | g.control_mask));
    double* b = a + 2 * stride;
    uint64_t j = 0;
    for (; j + 2 <= run; j += 2) {
      __m256d x = _mm256_loadu_pd(a + 2 * j), y = _mm256_loadu_pd(b + 2 * j);
      _mm256_storeu_pd(a + 2 * j, _mm256_add_pd(cmul(x, m00r, m00i), cmul(y, m01r, m01i)));
      _mm256_storeu_pd(b + 2 * j, _mm256_add_pd(cmul(x, m10r, m10i), cmul(y, m11r, m11i)));
    }
    for (; j < run; ++j) {
      auto* ca = reinterpret_cast<std::complex<double>*>(a) + j;
      auto* cb = reinterpret_cast<std::complex<double>*>(b) + j;
      std::complex<double> x = *ca, y = *cb;
      *ca = mul(m[0], x) + mul(m[1], y);
      *cb = mul(m[2], x) + mul(m[3], y);
    }
    k += run;
  }
}

// Dense D x D mat-vec (fused blocks, D = 4, 8, 16), column by column: out += M[:, c] * x[c].
// With each column kept as pairs [M[2v][c], M[2v+1][c]] and their re/im-swapped copies, a
// complex multiply-add is two FMAs and one addsub at the end, so a block of 3 qubits stays
// under the memory bound and one of 4 close to it.
template <int D>
__attribute__((target("avx2,fma"))) void dense_avx2(std::complex<double>* psi, const PreparedGate<double>& g,
                                                     uint64_t begin, uint64_t end) {
  constexpr int V = D / 2;
  alignas(32) double mv[D][V][4], msw[D][V][4];
  for (int c = 0; c < D; ++c)
    for (int v = 0; v < V; ++v) {
      auto a = g.matrix[(2 * v) * D + c], b = g.matrix[(2 * v + 1) * D + c];
      double m[4] = {a.real(), a.imag(), b.real(), b.imag()};
      double w[4] = {a.imag(), a.real(), b.imag(), b.real()};
      for (int i = 0; i < 4; ++i) mv[c][v][i] = m[i], msw[c][v][i] = w[i];
    }
  uint64_t off[D];
  for (int j = 0; j < D; ++j) off[j] = g.offsets[j];
  const std::span<const int> fixed(g.sorted_fixed);
  for (uint64_t k = begin; k < end; ++k) {
    uint64_t base = insert_zero_bits(k, fixed) | g.control_mask;
    // Unrolled so that the accumulators stay in registers (GCC does not fully unroll at -O2).
    __m256d A[V], B[V];
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) A[v] = _mm256_setzero_pd(), B[v] = _mm256_setzero_pd();
#pragma GCC unroll 16
    for (int c = 0; c < D; ++c) {
      const double* x = reinterpret_cast<const double*>(psi + (base | off[c]));
      __m256d xr = _mm256_broadcast_sd(x), xi = _mm256_broadcast_sd(x + 1);
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) {
        A[v] = _mm256_fmadd_pd(_mm256_load_pd(mv[c][v]), xr, A[v]);
        B[v] = _mm256_fmadd_pd(_mm256_load_pd(msw[c][v]), xi, B[v]);
      }
    }
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      __m256d o = _mm256_addsub_pd(A[v], B[v]);
      _mm_storeu_pd(reinterpret_cast<double*>(psi + (base | off[2 * v])), _mm256_castpd256_pd128(o));
      _mm_storeu_pd(reinterpret_cast<double*>(psi + (base | off[2 * v + 1])), _mm256_extractf128_pd(o, 1));
    }
  }
}

// The general kernel's loops, compiled for AVX2/FMA so the mat-vec of fused blocks vectorises.
__attribute__((target("avx2,fma"))) void general_avx2(std::complex<double>* psi, const PreparedGate<double>& g,
                                                       uint64_t begin, uint64_t end) {
  const std::size_t dim = g.offsets.size();
  if (g.shape != MatrixShape::kDense) return general_portable(psi, g, begin, end);
  if (dim == 4) return dense_avx2<4>(psi, g, begin, end);
  if (dim == 8) return dense_avx2<8>(psi, g, begin, end);
  if (dim == 16) return dense_avx2<16>(psi, g, begin, end);
  alignas(32) double in[128], out[128];
  const double* mat = reinterpret_cast<const double*>(g.matrix.data());
  for (uint64_t k = begin; k < end; ++k) {
    uint64_t base = insert_zero_bits(k, g.sorted_fixed) | g.control_mask;
    for (std::size_t j = 0; j < dim; ++j) {
      auto v = psi[base | g.offsets[j]];
      in[2 * j] = v.real(), in[2 * j + 1] = v.imag();
    }
    for (std::size_t r = 0; r < dim; ++r) {
      __m256d acc = _mm256_setzero_pd();
      const double* row = mat + 2 * r * dim;
      std::size_t c = 0;
      for (; c + 2 <= dim; c += 2) {
        __m256d mv = _mm256_loadu_pd(row + 2 * c);  // [m0r, m0i, m1r, m1i]
        __m256d x = _mm256_load_pd(in + 2 * c);
        __m256d mre = _mm256_movedup_pd(mv);        // [m0r, m0r, m1r, m1r]
        __m256d mim = _mm256_permute_pd(mv, 0b1111);  // [m0i, m0i, m1i, m1i]
        acc = _mm256_add_pd(acc, cmul(x, mre, mim));
      }
      __m128d lo = _mm256_castpd256_pd128(acc), hi = _mm256_extractf128_pd(acc, 1);
      __m128d s = _mm_add_pd(lo, hi);
      double re = _mm_cvtsd_f64(s), im = _mm_cvtsd_f64(_mm_unpackhi_pd(s, s));
      for (; c < dim; ++c) {
        std::complex<double> m(row[2 * c], row[2 * c + 1]), x(in[2 * c], in[2 * c + 1]);
        auto p = mul(m, x);
        re += p.real(), im += p.imag();
      }
      out[2 * r] = re, out[2 * r + 1] = im;
    }
    for (std::size_t j = 0; j < dim; ++j) psi[base | g.offsets[j]] = {out[2 * j], out[2 * j + 1]};
  }
}
#endif

}  // namespace

template <typename T>
void apply_gate_range(std::complex<T>* psi, const PreparedGate<T>& g, uint64_t begin, uint64_t end, bool simd) {
#if SCIGATE_X86
  if constexpr (std::is_same_v<T, double>) {
    if (simd) {
      if (g.dense_1q_fast) return dense_1q_avx2(psi, g, begin, end);
      if (g.diagonal_full && g.targets.size() == 1) return diagonal_1q_avx2(psi, g, begin, end);
      if (!g.diagonal_full && g.targets.size() == 1) return single_target_avx2(psi, g, begin, end);
      if (!g.diagonal_full) return general_avx2(psi, g, begin, end);
    }
  }
#endif
  (void)simd;
  if (g.dense_1q_fast) return dense_1q_portable(psi, g, begin, end);
  if (g.diagonal_full) return diagonal_full_portable(psi, g, begin, end);
  if (g.targets.size() == 1) return single_target_portable(psi, g, begin, end);
  general_portable(psi, g, begin, end);
}

template PreparedGate<double> prepare_gate<double>(int, const std::vector<int>&, const std::vector<int>&,
                                                   std::span<const std::complex<double>>);
template PreparedGate<float> prepare_gate<float>(int, const std::vector<int>&, const std::vector<int>&,
                                                 std::span<const std::complex<double>>);
template void apply_gate_range<double>(std::complex<double>*, const PreparedGate<double>&, uint64_t, uint64_t, bool);
template void apply_gate_range<float>(std::complex<float>*, const PreparedGate<float>&, uint64_t, uint64_t, bool);

}  // namespace scigate::quantum
