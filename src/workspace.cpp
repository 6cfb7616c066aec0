#include "workspace.hpp"

#include <map>
#include <mutex>
#include <utility>

namespace flashprefill::detail {

void* cached_workspace(Device device, size_t bytes) {
  static std::mutex mutex;
  static std::map<std::pair<int, int>, Buffer> cache;  // (device type, index) -> buffer
  std::lock_guard<std::mutex> lock(mutex);
  Buffer& buffer = cache[{static_cast<int>(device.type), device.index}];
  if (buffer.bytes() < bytes) {
    buffer = Buffer();  // free first: the old and new buffers need not both fit
    buffer = Buffer::allocate(device, bytes + bytes / 4);
  }
  return buffer.data();
}

}  // namespace flashprefill::detail
