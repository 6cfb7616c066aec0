// The structured synthetic input of BENCHMARK.md, deterministic for a seed on any thread count:
// every (sequence, head) stream draws from its own generator seeded from (seed, tensor, b, head).
#include "flashprefill/synthetic.hpp"

#include <cmath>
#include <random>
#include <thread>
#include <vector>

#include "common/half.hpp"
#include "flashprefill/error.hpp"

namespace flashprefill {
namespace {

constexpr float kQueryBias = 2.0f, kSinkBias = 8.0f, kStripeBias = 5.0f, kSharedScale = 1.5f;
constexpr int kSinkKeys = 4;
constexpr double kRopeBase = 10000.0;

uint64_t mix(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  // splitmix64 over the tuple: independent, reproducible streams.
  uint64_t x = seed ^ (a * 0x9E3779B97F4A7C15ull) ^ (b * 0xBF58476D1CE4E5B9ull) ^
               (c * 0x94D049BB133111EBull);
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Rotary embedding on adjacent pairs (2m, 2m + 1) at position pos; inv_freq[m] = base^(-2m/D).
void apply_rope(float* x, const std::vector<double>& inv_freq, int64_t pos) {
  for (size_t m = 0; m < inv_freq.size(); ++m) {
    const double angle = double(pos) * inv_freq[m];
    const float c = float(std::cos(angle)), s = float(std::sin(angle));
    const float x0 = x[2 * m], x1 = x[2 * m + 1];
    x[2 * m] = x0 * c - x1 * s;
    x[2 * m + 1] = x0 * s + x1 * c;
  }
}

template <typename Body>
void parallel_over(int64_t count, Body&& body) {
  const int64_t threads =
      std::min<int64_t>(count, std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int64_t w = 0; w < threads; ++w)
    pool.emplace_back([&, w] {
      for (int64_t n = w; n < count; n += threads) body(n);
    });
  for (auto& t : pool) t.join();
}

}  // namespace

SyntheticInput make_structured_input(const SyntheticShape& shape, uint64_t seed) {
  const int64_t B = shape.batch, L = shape.seq_len, Hq = shape.heads_q, Hkv = shape.heads_kv,
                D = shape.head_dim;
  if (B < 0 || L < 0 || Hq < 1 || Hkv < 1 || Hq % Hkv != 0 || D < 2 || D % 2 != 0)
    throw Error("make_structured_input: bad shape (B " + std::to_string(B) + ", L " +
                std::to_string(L) + ", H_q " + std::to_string(Hq) + ", H_kv " +
                std::to_string(Hkv) + ", D " + std::to_string(D) +
                "); expected H_q a multiple of H_kv and an even D");
  SyntheticInput input;
  input.shape = shape;
  input.q.resize(static_cast<size_t>(B * L * Hq * D));
  input.k.resize(static_cast<size_t>(B * L * Hkv * D));
  input.v.resize(static_cast<size_t>(B * L * Hkv * D));
  const int64_t group = Hq / Hkv;
  std::vector<double> inv_freq(static_cast<size_t>(D / 2));
  for (int64_t m = 0; m < D / 2; ++m)
    inv_freq[m] = std::pow(kRopeBase, -2.0 * double(m) / double(D));

  for (int64_t b = 0; b < B; ++b) {
    // Per kv head: the unit direction u and the stripe positions. Shared: the vector c.
    std::vector<std::vector<float>> direction(static_cast<size_t>(Hkv),
                                              std::vector<float>(static_cast<size_t>(D)));
    std::vector<std::vector<int64_t>> stripes(static_cast<size_t>(Hkv));
    std::vector<float> shared(static_cast<size_t>(D));
    {
      std::mt19937_64 rng(mix(seed, 1, uint64_t(b), 0));
      std::normal_distribution<float> normal;
      for (float& x : shared) x = kSharedScale * normal(rng);
      const int64_t num_stripes = std::max<int64_t>(1, L / 512);
      std::uniform_int_distribution<int64_t> position(0, std::max<int64_t>(0, L - 1));
      for (int64_t h = 0; h < Hkv; ++h) {
        double norm = 0;
        for (float& x : direction[h]) {
          x = normal(rng);
          norm += double(x) * x;
        }
        for (float& x : direction[h]) x = float(x / std::sqrt(norm));
        for (int64_t n = 0; n < num_stripes; ++n) stripes[h].push_back(position(rng));
      }
    }
    // One task per (tensor, head): q heads, then k heads, then v heads.
    parallel_over(Hq + 2 * Hkv, [&](int64_t task) {
      const int which = task < Hq ? 0 : task < Hq + Hkv ? 1 : 2;
      const int64_t h = which == 0 ? task : which == 1 ? task - Hq : task - Hq - Hkv;
      const int64_t heads = which == 0 ? Hq : Hkv;
      const int64_t kv_head = which == 0 ? h / group : h;
      std::vector<uint16_t>& out = which == 0 ? input.q : which == 1 ? input.k : input.v;
      std::mt19937_64 rng(mix(seed, 2 + uint64_t(which), uint64_t(b), uint64_t(h)));
      std::normal_distribution<float> normal;
      std::vector<float> bias(static_cast<size_t>(L), 0.0f);  // multiple of u per position
      if (which == 0) std::fill(bias.begin(), bias.end(), kQueryBias);
      if (which == 1) {
        for (int64_t s = 0; s < std::min<int64_t>(kSinkKeys, L); ++s) bias[s] += kSinkBias;
        for (int64_t s : stripes[kv_head]) bias[s] += kStripeBias;
      }
      std::vector<float> x(static_cast<size_t>(D));
      for (int64_t pos = 0; pos < L; ++pos) {
        for (int64_t d = 0; d < D; ++d) x[d] = normal(rng) + bias[pos] * direction[kv_head][d];
        if (which != 2) {
          for (int64_t d = 0; d < D; ++d) x[d] += shared[d];
          apply_rope(x.data(), inv_freq, pos);
        }
        uint16_t* dst = &out[((b * L + pos) * heads + h) * D];
        for (int64_t d = 0; d < D; ++d) dst[d] = detail::float_to_bf16(x[d]);
      }
    });
  }
  return input;
}

}  // namespace flashprefill
