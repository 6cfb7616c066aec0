// A minimal parallel-for over an index range for the CPU backend: static chunks, one per thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace flashprefill::cpu {

inline int worker_count() {
  static const int count = std::max(1u, std::thread::hardware_concurrency());
  return count;
}

// Calls body(index) for index in [0, count); indices are dealt round-robin so that long and short
// work items (rows near the diagonal vs far from it) spread over the threads.
template <typename Body>
void parallel_for(int64_t count, Body&& body) {
  const int threads = static_cast<int>(std::min<int64_t>(worker_count(), count));
  if (threads <= 1) {
    for (int64_t index = 0; index < count; ++index) body(index);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int worker = 0; worker < threads; ++worker)
    pool.emplace_back([&, worker] {
      for (int64_t index = worker; index < count; index += threads) body(index);
    });
  for (auto& thread : pool) thread.join();
}

}  // namespace flashprefill::cpu
