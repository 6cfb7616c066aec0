// The int8 pre-filter's bound (src/common/int8_filter.hpp), which lets the CUDA score kernel drop
// key blocks without their exact scores: for every query block and pooled key, the interval must
// hold the exact best score max_t q_t . kbar_j. Inputs are bf16/fp16 values, as the kernel sees
// them, drawn to stress the quantization: Gaussian, outlier dimensions, rows of very different
// magnitude, tiny and denormal values, zeros, values near the fp16 limit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/int8_filter.hpp"
#include "test_util.hpp"

namespace flashprefill::testing {
namespace {

namespace filter = detail::int8_filter;

constexpr int kRows = 128, kKeys = 64, kDim = 128;

// The quantities the kernel computes, from values already rounded to the input dtype.
struct QueryBlock {
  std::vector<int8_t> quantized;  // [kRows][kDim]
  float scale = 0, max_l1 = 0;
};
QueryBlock quantize_queries(const std::vector<float>& q) {
  QueryBlock block;
  float max_abs = 0;
  for (int t = 0; t < kRows; ++t) {
    float l1 = 0;
    for (int d = 0; d < kDim; ++d) {
      max_abs = std::max(max_abs, std::fabs(q[t * kDim + d]));
      l1 += std::fabs(q[t * kDim + d]);
    }
    block.max_l1 = std::max(block.max_l1, l1);
  }
  const float inverse = filter::inverse_scale(max_abs);
  block.scale = 1.0f / inverse;
  for (float value : q) block.quantized.push_back(filter::quantize(value, inverse));
  return block;
}
struct PooledKey {
  std::vector<int8_t> quantized;  // [kDim]
  float scale = 0, l1 = 0;
};
PooledKey quantize_key(const float* k) {
  PooledKey key;
  float max_abs = 0;
  for (int d = 0; d < kDim; ++d) max_abs = std::max(max_abs, std::fabs(k[d]));
  const float inverse = filter::inverse_scale(max_abs);
  key.scale = 1.0f / inverse;
  for (int d = 0; d < kDim; ++d) {
    key.quantized.push_back(filter::quantize(k[d], inverse));
    key.l1 += float(std::abs(int(key.quantized.back())));
  }
  return key;
}

// Checks every key of a block; returns the widest interval seen relative to the score range, so
// that a caller can also see that the bound is useful, not only safe.
double check_bounds(const std::vector<float>& q, const std::vector<float>& k) {
  const QueryBlock block = quantize_queries(q);
  double widest = 0;
  for (int j = 0; j < kKeys; ++j) {
    const PooledKey key = quantize_key(&k[size_t(j) * kDim]);
    int32_t max_product = INT32_MIN;
    double exact = -INFINITY;
    for (int t = 0; t < kRows; ++t) {
      int32_t product = 0;
      double dot = 0;
      for (int d = 0; d < kDim; ++d) {
        product += int32_t(block.quantized[t * kDim + d]) * key.quantized[d];
        dot += double(q[t * kDim + d]) * k[size_t(j) * kDim + d];
      }
      max_product = std::max(max_product, product);
      exact = std::max(exact, dot);
    }
    const filter::Interval interval = filter::best_score_interval(max_product, key.scale, key.l1, block.scale, block.max_l1);
    if (!(interval.lower <= exact && exact <= interval.upper)) {
      ADD_FAILURE() << "key " << j << ": exact best score " << exact << " outside [" << interval.lower << ", " << interval.upper << "]";
      return widest;
    }
    if (!std::isfinite(interval.upper - interval.lower)) continue;  // no bound (tiny scales): scored exactly
    widest = std::max(widest, double(interval.upper - interval.lower));
  }
  return widest;
}

// Values of a distribution, rounded to the dtype.
std::vector<float> draw(std::mt19937_64& rng, size_t count, DType dtype, const std::function<float(size_t)>& value) {
  std::vector<float> out(count);
  for (size_t n = 0; n < count; ++n) out[n] = float(from_half(to_half(value(n), dtype), dtype));
  (void)rng;
  return out;
}

TEST(Int8Filter, IntervalHoldsTheExactBestScore) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform(-3.0f, 3.0f);
  const size_t nq = size_t(kRows) * kDim, nk = size_t(kKeys) * kDim;
  struct Case {
    std::string name;
    DType dtype;
    std::function<float(size_t)> q, k;
  };
  std::vector<float> row_scale(kRows), key_scale(kKeys);
  for (float& s : row_scale) s = std::pow(10.0f, uniform(rng));
  for (float& s : key_scale) s = std::pow(10.0f, uniform(rng));
  const std::vector<Case> cases = {
      {"gaussian", DType::bf16, [&](size_t) { return normal(rng); }, [&](size_t) { return normal(rng); }},
      {"pooled-like keys", DType::bf16, [&](size_t) { return 2.0f + normal(rng); }, [&](size_t) { return 0.1f * normal(rng); }},
      {"outlier dims", DType::bf16, [&](size_t n) { return normal(rng) * (n % kDim == 7 ? 100.0f : 1.0f); },
       [&](size_t n) { return normal(rng) * (n % kDim == 7 ? 50.0f : 1.0f); }},
      {"rows of very different size", DType::fp16, [&](size_t n) { return normal(rng) * row_scale[n / kDim]; },
       [&](size_t n) { return normal(rng) * key_scale[n / kDim]; }},
      {"tiny and denormal", DType::bf16, [&](size_t) { return 1e-39f * normal(rng); }, [&](size_t) { return 1e-30f * normal(rng); }},
      {"small but bounded", DType::bf16, [&](size_t) { return 1e-15f * normal(rng); }, [&](size_t) { return 1e-12f * normal(rng); }},
      {"tiny queries, huge keys", DType::bf16, [&](size_t) { return 1e-16f * normal(rng); }, [&](size_t) { return 1e15f * normal(rng); }},
      {"zeros", DType::bf16, [&](size_t n) { return n < nq / 2 ? 0.0f : normal(rng); }, [&](size_t n) { return n % 3 ? 0.0f : normal(rng); }},
      {"near the fp16 limit", DType::fp16, [&](size_t) { return 6.0e4f * std::tanh(normal(rng)); },
       [&](size_t) { return 6.0e4f * std::tanh(normal(rng)); }},
      {"all keys zero", DType::bf16, [&](size_t) { return normal(rng); }, [&](size_t) { return 0.0f; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    for (int round = 0; round < 3; ++round) check_bounds(draw(rng, nq, c.dtype, c.q), draw(rng, nk, c.dtype, c.k));
  }
}

// The bound is nearly tight when every rounding error has the same sign: values at n + 15/32
// quantization steps (exact in fp16, with power-of-two scales) whose signs agree dimension by
// dimension between queries and keys: the error is over 90% of the bound, so a bound 10% too small fails.
TEST(Int8Filter, IntervalHoldsWhenEveryRoundingErrorAligns) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> step(0, 60), coin(0, 1);
  const float query_step = 1.0f / 64, key_step = 1.0f / 1024;  // powers of two: 127 / max is exact
  std::vector<float> sign(kDim), q(size_t(kRows) * kDim), k(size_t(kKeys) * kDim);
  for (float& s : sign) s = coin(rng) ? 1.0f : -1.0f;
  // Every row alike, so that max_t L1(q_t), which the bound uses, is each row's own L1.
  for (int d = 0; d < kDim; ++d) q[d] = query_step * (float(step(rng)) + 15.0f / 32) * sign[d];
  q[0] = 127 * query_step * sign[0];  // the block's max |q|, exactly 127 steps
  for (int t = 1; t < kRows; ++t) std::copy(q.begin(), q.begin() + kDim, q.begin() + t * kDim);
  for (int j = 0; j < kKeys; ++j)
    for (int d = 0; d < kDim; ++d) k[j * kDim + d] = key_step * (float(step(rng)) + 15.0f / 32) * sign[d];
  for (int j = 0; j < kKeys; ++j) k[j * kDim] = 127 * key_step * sign[0];
  for (float value : q) ASSERT_EQ(float(from_half(to_half(value, DType::fp16), DType::fp16)), value);
  check_bounds(q, k);
}

// On Gaussian data the interval is narrow next to the spread of scores: the filter can drop blocks.
TEST(Int8Filter, IntervalIsNarrowOnGaussianData) {
  FP_SEEDED(seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  auto q = draw(rng, size_t(kRows) * kDim, DType::bf16, [&](size_t) { return normal(rng); });
  auto k = draw(rng, size_t(kKeys) * kDim, DType::bf16, [&](size_t) { return normal(rng); });
  // One score has standard deviation sqrt(D); the interval of a block's best score is narrower.
  EXPECT_LT(check_bounds(q, k), std::sqrt(double(kDim)));
}

}  // namespace
}  // namespace flashprefill::testing
