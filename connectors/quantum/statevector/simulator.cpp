#include "connectors/quantum/statevector/simulator.hpp"
#include "server/common/thread_name.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>

#include "connectors/quantum/statevector/kernels.hpp"

namespace scigate::quantum {

std::string format_bytes(uint64_t b) {
  char buf[64];
  if (b >= (uint64_t{1} << 30)) std::snprintf(buf, sizeof buf, "%.1f GiB", double(b) / double(uint64_t{1} << 30));
  else if (b >= (uint64_t{1} << 20)) std::snprintf(buf, sizeof buf, "%llu MiB", (unsigned long long)(b >> 20));
  else std::snprintf(buf, sizeof buf, "%llu KiB", (unsigned long long)((b + 1023) >> 10));
  return buf;
}

uint64_t max_outcomes(const Circuit& c, const SimRequest& r) {
  if (r.shots == 0 || !c.has_measurements()) return 0;
  std::set<int> written, measured;
  for (const auto& op : c.ops)
    if (op.kind == OpKind::kMeasure) {
      written.insert(op.clbit);
      measured.insert(op.targets[0]);
    }
  // Bits never measured are always 0: only the measured ones tell outcomes apart. Terminal
  // measurements read one final state: at most as many outcomes as the measured qubits have.
  std::size_t bits = written.size();
  if (c.measurements_terminal()) bits = std::min(bits, measured.size());
  if (bits >= 63) return r.shots;
  return std::min<uint64_t>(r.shots, uint64_t{1} << bits);
}

uint64_t answer_memory(const Circuit& c, const SimRequest& r) {
  // Per distinct outcome: its key (every classical bit, a space between registers) in the
  // counts map, in the JSON answer, in that answer's text and in its copy for the audit, with
  // about 48 bytes of bookkeeping each time. Built after the state is freed.
  const uint64_t key = static_cast<uint64_t>(c.num_clbits) + c.cregs.size() + 48;
  const uint64_t outcomes = max_outcomes(c, r);
  if (outcomes > UINT64_MAX / 4 / key) return UINT64_MAX;
  return 4 * outcomes * key;
}

uint64_t state_memory(const Circuit& c, const SimRequest& r, Precision p) {
  if (c.num_qubits >= 58) return UINT64_MAX;
  uint64_t one = (uint64_t{1} << c.num_qubits) * (p == Precision::kDouble ? 16 : 8);
  bool per_shot = !c.measurements_terminal() && r.shots > 1;
  return per_shot ? 2 * one : one;
}

uint64_t required_memory(const Circuit& c, const SimRequest& r, Precision p) {
  // The state and the answer are not held at once: each must fit.
  return std::max(state_memory(c, r, p), answer_memory(c, r));
}

// --- fusion ----------------------------------------------------------------------------------

namespace {

struct Block {
  std::vector<int> qubits;  // sorted
  std::vector<const Op*> ops;
};

std::vector<int> op_qubits(const Op& op) {
  std::vector<int> q = op.controls;
  q.insert(q.end(), op.targets.begin(), op.targets.end());
  return q;
}

// The block's matrix: the product of its ops, each embedded on the block's qubits.
Op block_op(const Block& b) {
  if (b.ops.size() == 1) return *b.ops[0];  // keeps the controlled/diagonal kernels of a lone gate
  std::size_t k = b.qubits.size(), dim = std::size_t{1} << k;
  Matrix acc(dim * dim, 0.0);
  for (std::size_t i = 0; i < dim; ++i) acc[i * dim + i] = 1;
  Matrix next(dim * dim);
  for (const Op* op : b.ops) {
    Matrix g = full_matrix(*op);
    std::vector<int> qs = op_qubits(*op);
    std::vector<int> pos(qs.size());  // where each of the op's qubits sits in the block
    for (std::size_t j = 0; j < qs.size(); ++j)
      pos[j] = static_cast<int>(std::lower_bound(b.qubits.begin(), b.qubits.end(), qs[j]) - b.qubits.begin());
    std::size_t gd = std::size_t{1} << qs.size();
    uint64_t opmask = 0;
    for (int p : pos) opmask |= uint64_t{1} << p;
    std::fill(next.begin(), next.end(), 0.0);
    // next = embed(g) * acc; embed(g)[r][c] = g[local(r)][local(c)] when r, c agree off the op's bits.
    for (std::size_t r = 0; r < dim; ++r) {
      std::size_t lr = 0;
      for (std::size_t j = 0; j < pos.size(); ++j) lr |= ((r >> pos[j]) & 1) << j;
      for (std::size_t lc = 0; lc < gd; ++lc) {
        Complex gv = g[lr * gd + lc];
        if (gv == 0.0) continue;
        std::size_t c = r & ~opmask;
        for (std::size_t j = 0; j < pos.size(); ++j) c |= ((lc >> j) & 1) << pos[j];
        for (std::size_t col = 0; col < dim; ++col) next[r * dim + col] += gv * acc[c * dim + col];
      }
    }
    std::swap(acc, next);
  }
  Op out;
  out.kind = OpKind::kGate;
  out.name = "fused";
  out.targets = b.qubits;
  out.matrix = std::move(acc);
  return out;
}

}  // namespace

std::vector<Op> fuse_gates(const std::vector<Op>& ops, int max_qubits) {
  std::vector<Op> out;
  std::vector<Block> open;  // pairwise disjoint, so they commute and can be emitted in any order
  auto flush = [&](std::size_t i) {
    out.push_back(block_op(open[i]));
    open.erase(open.begin() + static_cast<std::ptrdiff_t>(i));
  };
  auto flush_all = [&] {
    while (!open.empty()) flush(0);
  };
  for (const Op& op : ops) {
    if (op.kind == OpKind::kGlobalPhase && !op.condition) {
      out.push_back(op);  // commutes with everything
      continue;
    }
    if (op.kind != OpKind::kGate || op.condition) {
      flush_all();
      out.push_back(op);
      continue;
    }
    std::vector<int> q = op_qubits(op);
    std::sort(q.begin(), q.end());
    std::vector<std::size_t> hit;
    std::vector<int> merged = q;
    for (std::size_t i = 0; i < open.size(); ++i) {
      bool meets = false;
      for (int x : open[i].qubits) meets |= std::binary_search(q.begin(), q.end(), x);
      if (meets) {
        hit.push_back(i);
        merged.insert(merged.end(), open[i].qubits.begin(), open[i].qubits.end());
      }
    }
    std::sort(merged.begin(), merged.end());
    merged.erase(std::unique(merged.begin(), merged.end()), merged.end());
    if (static_cast<int>(q.size()) > max_qubits) {
      for (std::size_t j = hit.size(); j-- > 0;) flush(hit[j]);
      out.push_back(op);
      continue;
    }
    if (!hit.empty() && static_cast<int>(merged.size()) <= max_qubits) {
      Block b;
      b.qubits = merged;
      for (std::size_t j : hit) b.ops.insert(b.ops.end(), open[j].ops.begin(), open[j].ops.end());
      b.ops.push_back(&op);
      for (std::size_t j = hit.size(); j-- > 0;) open.erase(open.begin() + static_cast<std::ptrdiff_t>(hit[j]));
      open.push_back(std::move(b));
      continue;
    }
    for (std::size_t j = hit.size(); j-- > 0;) flush(hit[j]);
    // Pack it with an unrelated open block that has room: one pass instead of two.
    bool placed = false;
    for (auto& b : open) {
      if (b.qubits.size() + q.size() <= static_cast<std::size_t>(max_qubits)) {
        b.qubits.insert(b.qubits.end(), q.begin(), q.end());
        std::sort(b.qubits.begin(), b.qubits.end());
        b.ops.push_back(&op);
        placed = true;
        break;
      }
    }
    if (!placed) open.push_back(Block{q, {&op}});
  }
  flush_all();
  return out;
}

// --- threads ---------------------------------------------------------------------------------

namespace {

// A fixed team of threads that runs one range-split job at a time; the caller's thread takes
// the first share. Cheaper per gate than starting threads, which matters with ~1,000 gates.
class ThreadTeam {
 public:
  explicit ThreadTeam(int threads) {
    for (int i = 1; i < threads; ++i)
      workers_.emplace_back([this, i] {
        name_this_thread("sg-qsim-" + std::to_string(i));
        work(i);
      });
  }
  ~ThreadTeam() {
    {
      std::lock_guard lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // f(begin, end) over [0, n), shares aligned to 64 iterations.
  void run(uint64_t n, const std::function<void(uint64_t, uint64_t)>& f) {
    if (workers_.empty() || n < 4096) return f(0, n);
    {
      std::lock_guard lock(m_);
      job_ = &f;
      n_ = n;
      pending_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    cv_.notify_all();
    auto [b, e] = share(0);
    f(b, e);
    std::unique_lock lock(m_);
    done_.wait(lock, [&] { return pending_ == 0; });
  }

 private:
  std::pair<uint64_t, uint64_t> share(int i) const {
    auto edge = [&](int k) { return std::min(n_, ((n_ * k / size()) + 63) & ~uint64_t{63}); };
    return {edge(i), i + 1 == size() ? n_ : edge(i + 1)};
  }
  void work(int i) {
    uint64_t seen = 0;
    for (;;) {
      std::unique_lock lock(m_);
      cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      auto [b, e] = share(i);
      const auto* f = job_;
      lock.unlock();
      if (b < e) (*f)(b, e);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }
  std::vector<std::thread> workers_;
  std::mutex m_;
  std::condition_variable cv_, done_;
  const std::function<void(uint64_t, uint64_t)>* job_ = nullptr;
  uint64_t n_ = 0, generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// --- the simulation --------------------------------------------------------------------------

template <typename T>
class Simulation {
 public:
  using Amp = std::complex<T>;

  Simulation(const Circuit& c, const SimRequest& r, const SimOptions& o) : c_(c), req_(r), opt_(o) {}

  std::variant<SimResult, Error> run() {
    n_ = c_.num_qubits;
    dim_ = uint64_t{1} << n_;
    int threads = opt_.threads > 0 ? opt_.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    if (n_ < opt_.parallel_min_qubits) threads = 1;
    team_ = std::make_unique<ThreadTeam>(threads);
    simd_ = opt_.simd && simd_available();
    result_.threads = threads;
    result_.simd = simd_;
    result_.memory_bytes = required_memory(c_, req_, opt_.precision);

    bool terminal = c_.measurements_terminal();
    if (!req_.observables.empty() && !terminal)
      return Error::invalid_arguments("observables need a circuit without mid-circuit measurement, reset or conditions",
                                      "remove them, or ask for counts only");
    for (const auto& o : req_.observables)
      for (const auto& term : o.terms) {
        const std::string& p = term.first;
        if (static_cast<int>(p.size()) != n_)
          return Error::invalid_arguments("Pauli string '" + p + "' has " + std::to_string(p.size()) + " letters; the circuit has " +
                                          std::to_string(n_) + " qubits", "give one of I, X, Y, Z per qubit, qubit 0 rightmost");
        if (p.find_first_not_of("IXYZ") != std::string::npos)
          return Error::invalid_arguments("Pauli string '" + p + "' may only hold I, X, Y and Z");
      }
    if (req_.return_statevector && n_ > opt_.max_statevector_qubits)
      return Error::invalid_arguments("return_statevector is limited to " + std::to_string(opt_.max_statevector_qubits) +
                                      " qubits; this circuit has " + std::to_string(n_), "ask for counts or expectation values instead");

    ops_ = opt_.fusion ? fuse_gates(c_.ops, std::clamp(opt_.max_fused_qubits, 2, 5)) : c_.ops;
    prepared_.resize(ops_.size());
    for (std::size_t i = 0; i < ops_.size(); ++i)
      if (ops_[i].kind == OpKind::kGate) prepared_[i] = prepare_gate<T>(n_, ops_[i].controls, ops_[i].targets, ops_[i].matrix);
    result_.ops_applied = ops_.size();

    state_ = allocate();
    if (!state_) return Error{ErrorCode::kBackendUnavailable, "the simulator could not allocate its state", "retry later", {}};
    init_zero(state_.get());
    std::mt19937_64 rng(req_.seed);

    if (terminal) {
      total_work_ = static_cast<double>(ops_.size());
      for (std::size_t i = 0; i < ops_.size(); ++i) {
        if (ops_[i].kind != OpKind::kMeasure)  // terminal: sampled below, all at once
          if (auto e = step(i, nullptr, rng)) return *e;
        tick(1);
      }
      if (req_.return_statevector) copy_out();
      for (const auto& o : req_.observables) result_.expectation_values.push_back(expectation(o));
      if (c_.has_measurements() && req_.shots > 0)
        if (auto e = sample(rng)) return *e;
      result_.sampled_once = true;
      return std::move(result_);
    }

    // Mid-circuit measurement: run the deterministic prefix once, then each shot from a copy.
    std::size_t first = 0;
    while (first < ops_.size() && ops_[first].kind != OpKind::kMeasure && ops_[first].kind != OpKind::kReset &&
           !ops_[first].condition)
      ++first;
    std::vector<uint8_t> bits(static_cast<std::size_t>(c_.num_clbits));
    total_work_ = static_cast<double>(first + (ops_.size() - first) * std::max<uint64_t>(req_.shots, 1));
    for (std::size_t i = 0; i < first; ++i) {
      if (auto e = step(i, &bits, rng)) return *e;
      tick(1);
    }
    std::unique_ptr<Amp, FreeDeleter> snapshot;
    if (req_.shots > 1) {
      snapshot = allocate();
      if (!snapshot) return Error{ErrorCode::kBackendUnavailable, "the simulator could not allocate its state", "retry later", {}};
      copy(snapshot.get(), state_.get());
    }
    uint64_t shots = std::max<uint64_t>(req_.shots, 1);
    for (uint64_t s = 0; s < shots; ++s) {
      if (s > 0) copy(state_.get(), snapshot.get());
      std::fill(bits.begin(), bits.end(), 0);
      for (std::size_t i = first; i < ops_.size(); ++i) {
        if (auto e = step(i, &bits, rng)) return *e;
        tick(1);
      }
      if (req_.shots > 0) ++result_.counts[key(bits)];
    }
    if (req_.return_statevector) copy_out();
    return std::move(result_);
  }

 private:
  std::unique_ptr<Amp, FreeDeleter> allocate() {
    std::size_t bytes = std::max<std::size_t>(64, dim_ * sizeof(Amp));
    return std::unique_ptr<Amp, FreeDeleter>(static_cast<Amp*>(std::aligned_alloc(64, (bytes + 63) & ~std::size_t{63})));
  }
  // Zeroed by the threads that will work on each share, so pages land near them.
  void init_zero(Amp* s) {
    team_->run(dim_, [s](uint64_t b, uint64_t e) { std::memset(static_cast<void*>(s + b), 0, (e - b) * sizeof(Amp)); });
    s[0] = 1;
    ++result_.passes;
  }
  void copy(Amp* dst, const Amp* src) {
    team_->run(dim_, [dst, src](uint64_t b, uint64_t e) { std::memcpy(static_cast<void*>(dst + b), src + b, (e - b) * sizeof(Amp)); });
    ++result_.passes;
  }
  void copy_out() {
    result_.statevector.resize(dim_);
    for (uint64_t i = 0; i < dim_; ++i) result_.statevector[i] = std::complex<double>(state_.get()[i]);
  }

  void tick(double n) {
    done_work_ += n;
    if (!opt_.progress || total_work_ <= 0) return;
    double f = done_work_ / total_work_;
    if (f - last_progress_ >= 0.01 || f >= 1) {
      last_progress_ = f;
      opt_.progress(f);
    }
  }

  std::optional<Error> step(std::size_t i, std::vector<uint8_t>* bits, std::mt19937_64& rng) {
    if (opt_.cancelled && opt_.cancelled())
      return Error{ErrorCode::kCancelled, "the simulation was cancelled", {}, {}};
    const Op& op = ops_[i];
    if (op.condition) {
      uint64_t v = 0;
      for (std::size_t b = 0; b < op.condition->clbits.size(); ++b) v |= uint64_t((*bits)[op.condition->clbits[b]]) << b;
      if (v != op.condition->value) return std::nullopt;
    }
    Amp* s = state_.get();
    switch (op.kind) {
      case OpKind::kGate: {
        const auto& g = prepared_[i];
        bool simd = simd_;
        team_->run(g.iterations, [s, &g, simd](uint64_t b, uint64_t e) { apply_gate_range<T>(s, g, b, e, simd); });
        ++result_.passes;
        break;
      }
      case OpKind::kGlobalPhase: {
        Amp ph(op.matrix[0]);
        team_->run(dim_, [s, ph](uint64_t b, uint64_t e) {
          for (uint64_t k = b; k < e; ++k) s[k] *= ph;
        });
        ++result_.passes;
        break;
      }
      case OpKind::kMeasure:
      case OpKind::kReset: {
        int q = op.targets[0];
        double p1 = probability_one(q);
        double u = uniform(rng);
        int outcome = u < p1 ? 1 : 0;
        collapse(q, outcome, outcome ? p1 : 1 - p1, op.kind == OpKind::kReset && outcome == 1);
        if (op.kind == OpKind::kMeasure && bits) (*bits)[op.clbit] = static_cast<uint8_t>(outcome);
        break;
      }
    }
    return std::nullopt;
  }

  static double uniform(std::mt19937_64& rng) { return double(rng() >> 11) * 0x1.0p-53; }

  double probability_one(int q) {
    std::vector<double> partial(team_->size() * 8, 0.0);
    const Amp* s = state_.get();
    std::mutex m;
    double total = 0;
    team_->run(dim_ >> 1, [&, s, q](uint64_t b, uint64_t e) {
      double acc = 0;
      for (uint64_t k = b; k < e; ++k) acc += std::norm(std::complex<double>(s[insert_zero_bits(k, std::span<const int>(&q, 1)) | (uint64_t{1} << q)]));
      std::lock_guard lock(m);
      total += acc;
    });
    ++result_.passes;
    return std::clamp(total, 0.0, 1.0);
  }

  // Keeps the `outcome` half, renormalised; with `flip` moves it to |0> (reset).
  void collapse(int q, int outcome, double p, bool flip) {
    Amp* s = state_.get();
    T scale = static_cast<T>(p > 0 ? 1 / std::sqrt(p) : 0);
    uint64_t bit = uint64_t{1} << q;
    team_->run(dim_ >> 1, [=](uint64_t b, uint64_t e) {
      for (uint64_t k = b; k < e; ++k) {
        uint64_t i0 = insert_zero_bits(k, std::span<const int>(&q, 1)), i1 = i0 | bit;
        Amp keep = (outcome ? s[i1] : s[i0]) * scale;
        if (flip) s[i0] = keep, s[i1] = 0;
        else if (outcome) s[i1] = keep, s[i0] = 0;
        else s[i0] = keep, s[i1] = 0;
      }
    });
    ++result_.passes;
  }

  double expectation(const Observable& o) {
    double total = 0;
    for (const auto& [pauli, coeff] : o.terms) {
      uint64_t xmask = 0, zmask = 0;
      int ny = 0;
      for (int q = 0; q < n_; ++q) {
        char ch = pauli[pauli.size() - 1 - q];
        if (ch == 'X' || ch == 'Y') xmask |= uint64_t{1} << q;
        if (ch == 'Z' || ch == 'Y') zmask |= uint64_t{1} << q;
        ny += ch == 'Y';
      }
      // <psi|P|psi> = sum_i conj(psi[i ^ x]) psi[i] (-1)^{|i & z|} i^{ny}
      const Amp* s = state_.get();
      std::mutex m;
      std::complex<double> sum = 0;
      team_->run(dim_, [&, s](uint64_t b, uint64_t e) {
        std::complex<double> acc = 0;
        for (uint64_t i = b; i < e; ++i) {
          std::complex<double> v = std::conj(std::complex<double>(s[i ^ xmask])) * std::complex<double>(s[i]);
          acc += (__builtin_popcountll(i & zmask) & 1) ? -v : v;
        }
        std::lock_guard lock(m);
        sum += acc;
      });
      ++result_.passes;
      static const std::complex<double> kPow[4] = {{1, 0}, {0, 1}, {-1, 0}, {0, -1}};
      total += coeff * (sum * kPow[ny % 4]).real();
    }
    return total;
  }

  // All shots from the final state in one pass: sorted uniforms against the running sum of
  // probabilities.
  std::optional<Error> sample(std::mt19937_64& rng) {
    std::vector<double> u(req_.shots);
    for (auto& x : u) x = uniform(rng);
    std::sort(u.begin(), u.end());
    std::unordered_map<uint64_t, uint64_t> by_index;
    const Amp* s = state_.get();
    double cum = 0;
    std::size_t next = 0;
    uint64_t last_nonzero = 0;
    for (uint64_t i = 0; i < dim_ && next < u.size(); ++i) {
      double p = std::norm(std::complex<double>(s[i]));
      if (p == 0) continue;
      last_nonzero = i;
      cum += p;
      while (next < u.size() && u[next] < cum) ++by_index[i], ++next;
    }
    if (next < u.size()) by_index[last_nonzero] += u.size() - next;  // rounding: the total may fall short of 1
    ++result_.passes;
    // Which qubit each classical bit ends up holding (the last measurement into it wins), once:
    // not the whole circuit again for every outcome.
    std::vector<int> source(static_cast<std::size_t>(c_.num_clbits), -1);
    for (const auto& op : c_.ops)
      if (op.kind == OpKind::kMeasure) source[static_cast<std::size_t>(op.clbit)] = op.targets[0];
    std::vector<std::pair<int, int>> measured;  // (clbit, qubit)
    for (std::size_t b = 0; b < source.size(); ++b)
      if (source[b] >= 0) measured.emplace_back(static_cast<int>(b), source[b]);
    std::vector<uint8_t> bits(static_cast<std::size_t>(c_.num_clbits));
    std::size_t done = 0;
    for (const auto& [idx, n] : by_index) {
      if ((++done & 1023) == 0 && opt_.cancelled && opt_.cancelled())
        return Error{ErrorCode::kCancelled, "the simulation was cancelled", {}, {}};
      std::fill(bits.begin(), bits.end(), 0);
      for (const auto& [clbit, qubit] : measured) bits[static_cast<std::size_t>(clbit)] = static_cast<uint8_t>((idx >> qubit) & 1);
      result_.counts[key(bits)] += n;
    }
    return std::nullopt;
  }

  std::string key(const std::vector<uint8_t>& bits) const {
    std::string k;
    for (auto r = c_.cregs.rbegin(); r != c_.cregs.rend(); ++r) {
      if (!k.empty()) k += ' ';
      for (int b = r->size - 1; b >= 0; --b) k += bits[r->offset + b] ? '1' : '0';
    }
    return k;
  }

  const Circuit& c_;
  const SimRequest& req_;
  const SimOptions& opt_;
  int n_ = 0;
  uint64_t dim_ = 0;
  bool simd_ = false;
  std::unique_ptr<ThreadTeam> team_;
  std::vector<Op> ops_;
  std::vector<PreparedGate<T>> prepared_;
  std::unique_ptr<Amp, FreeDeleter> state_;
  SimResult result_;
  double total_work_ = 0, done_work_ = 0, last_progress_ = 0;
};

}  // namespace

std::variant<SimResult, Error> run_statevector(const Circuit& circuit, const SimRequest& request, const SimOptions& options) {
  uint64_t need = required_memory(circuit, request, options.precision);
  if (need > options.max_memory_bytes) {
    const bool counts = answer_memory(circuit, request) > state_memory(circuit, request, options.precision);
    std::string who = std::to_string(circuit.num_qubits) + " qubits";
    // Name the counts when they are what does not fit.
    if (counts)
      who = "the counts of up to " + std::to_string(max_outcomes(circuit, request)) + " distinct outcomes of " +
             std::to_string(circuit.num_clbits) + " classical bits";
    std::string what = who + " need " + format_bytes(need);
    if (need == UINT64_MAX) what = who + " need more memory than exists";
    return Error{ErrorCode::kPolicyDenied, what + "; this project may use " + format_bytes(options.max_memory_bytes),
                 counts ? "use fewer shots, or measure into fewer classical bits"
                 : options.precision == Precision::kDouble ? "use fewer qubits, or precision \"single\" to halve the memory"
                                                           : "use fewer qubits",
                 {}};
  }
  if (options.precision == Precision::kSingle) return Simulation<float>(circuit, request, options).run();
  return Simulation<double>(circuit, request, options).run();
}

}  // namespace scigate::quantum
