#pragma once
// Gate kernels over a state vector of 2^n amplitudes. Each kernel works on a range of its own
// iteration space so that a ThreadTeam can split one gate across threads; ranges never
// overlap, so threads need no locking. The library is compiled for baseline x86-64; the AVX2/FMA
// versions are compiled with a target attribute and chosen at run time (simd_available()).
#include <complex>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace scigate::quantum {

// Whether this CPU runs the AVX2/FMA kernels (checked once).
bool simd_available();

// What a gate's matrix allows: a diagonal touches each amplitude once with no mixing, a
// permutation (with phases) only moves amplitudes, anything else is a dense mat-vec.
enum class MatrixShape { kDiagonal, kPermutation, kDense };
MatrixShape classify(std::span<const std::complex<double>> m, std::size_t dim);

// A gate prepared for a state of `num_qubits`: targets, control mask and its matrix in the
// state's precision. Built once per op; the kernels only read it.
template <typename T>
struct PreparedGate {
  std::vector<int> targets;
  uint64_t control_mask = 0;
  std::vector<int> sorted_fixed;  // targets and controls, ascending: the bits the iteration skips
  std::vector<uint64_t> offsets;  // the 2^k target offsets of local index j
  std::vector<std::complex<T>> matrix;
  MatrixShape shape = MatrixShape::kDense;
  std::vector<int> permutation;   // for kPermutation: row of the single non-zero in each column
  std::vector<std::complex<T>> phases;  // ... and its value
  // Iterations of the kernel: 2^(n - |sorted_fixed|), or 2^n for an uncontrolled diagonal.
  uint64_t iterations = 0;
  bool dense_1q_fast = false;     // uncontrolled single-qubit dense: the streaming kernel
  bool diagonal_full = false;     // uncontrolled diagonal: a straight pass over all amplitudes
};

template <typename T>
PreparedGate<T> prepare_gate(int num_qubits, const std::vector<int>& controls, const std::vector<int>& targets,
                             std::span<const std::complex<double>> matrix);

// Applies iterations [begin, end) of `g` to `state`. `simd` selects the AVX2 path where there
// is one (complex<double> single-qubit dense and diagonal kernels).
template <typename T>
void apply_gate_range(std::complex<T>* state, const PreparedGate<T>& g, uint64_t begin, uint64_t end, bool simd);

// Inserts a zero bit at each of `sorted` (ascending) positions of k.
inline uint64_t insert_zero_bits(uint64_t k, std::span<const int> sorted) {
  for (int p : sorted) {
    uint64_t low = k & ((uint64_t{1} << p) - 1);
    k = ((k >> p) << (p + 1)) | low;
  }
  return k;
}

}  // namespace scigate::quantum
