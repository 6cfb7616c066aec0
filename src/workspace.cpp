#include "workspace.hpp"

#include <map>
#include <mutex>
#include <tuple>
#include <utility>

namespace flashprefill::detail {

void* cached_workspace(Device device, const void* stream, size_t bytes) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int, const void*>, Buffer>
      cache;  // (device type, index, stream) -> buffer
  std::lock_guard<std::mutex> lock(mutex);
  // CPU calls ignore the stream (and are synchronous): one buffer per device.
  const void* key_stream = device.type == DeviceType::cuda ? stream : nullptr;
  Buffer& buffer = cache[{static_cast<int>(device.type), device.index, key_stream}];
  if (buffer.bytes() < bytes) {
    buffer = Buffer();  // free first: the old and new buffers need not both fit
    buffer = Buffer::allocate(device, bytes + bytes / 4);
  }
  return buffer.data();
}

}  // namespace flashprefill::detail
