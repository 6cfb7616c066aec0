// Tensor views, buffers and copies: the host side of memory handling.
#include <cstdlib>
#include <cstring>
#include <utility>

#include "device_memory.hpp"
#include "flashprefill/error.hpp"
#include "flashprefill/tensor.hpp"

namespace flashprefill {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::bf16:
    case DType::fp16:
      return 2;
    case DType::fp32:
    case DType::int32:
      return 4;
    case DType::int64:
      return 8;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::bf16:
      return "bf16";
    case DType::fp16:
      return "fp16";
    case DType::fp32:
      return "fp32";
    case DType::int32:
      return "int32";
    case DType::int64:
      return "int64";
  }
  return "?";
}

std::string device_name(Device device) {
  return device.type == DeviceType::cpu ? std::string("cpu")
                                        : "cuda:" + std::to_string(device.index);
}

TensorView TensorView::contiguous(void* data, DType dtype, Device device,
                                  std::initializer_list<int64_t> shape) {
  if (shape.size() > kMaxRank)
    throw Error("TensorView::contiguous: rank " + std::to_string(shape.size()) + " > 4");
  TensorView view;
  view.data = data;
  view.dtype = dtype;
  view.device = device;
  view.rank = static_cast<int>(shape.size());
  int d = 0;
  for (int64_t extent : shape) view.shape[d++] = extent;
  int64_t stride = 1;
  for (d = view.rank - 1; d >= 0; --d) {
    view.stride[d] = stride;
    stride *= view.shape[d];
  }
  return view;
}

int64_t TensorView::numel() const {
  if (rank == 0) return 0;
  int64_t n = 1;
  for (int d = 0; d < rank; ++d) n *= shape[d];
  return n;
}

bool TensorView::is_contiguous() const {
  int64_t expected = 1;
  for (int d = rank - 1; d >= 0; --d) {
    if (shape[d] != 1 && stride[d] != expected) return false;
    expected *= shape[d];
  }
  return true;
}

// std::to_string, not a stream: a stream takes the global C++ locale, which a host application (or a
// library it loads) may have replaced, and error messages must read the same everywhere.
std::string TensorView::shape_string() const {
  std::string s = "[";
  for (int d = 0; d < rank; ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
  return s + "]";
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  if (dst_device.type == DeviceType::cpu && src_device.type == DeviceType::cpu) {
    std::memcpy(dst, src, bytes);
    return;
  }
  cuda::memcpy_any(dst, src, bytes);
}

Buffer Buffer::allocate(Device device, size_t bytes) {
  Buffer buffer;
  buffer.device_ = device;
  buffer.bytes_ = bytes;
  if (bytes == 0) return buffer;
  if (device.type == DeviceType::cpu) {
    // 64-byte alignment: one cache line, and enough for any SIMD load.
    buffer.data_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!buffer.data_)
      throw Error("Buffer::allocate: out of host memory for " + std::to_string(bytes) + " bytes");
  } else {
    buffer.data_ = cuda::device_malloc(device.index, bytes);
  }
  return buffer;
}

Buffer::Buffer(Buffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      device_(other.device_) {}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    Buffer old(std::move(*this));
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    device_ = other.device_;
  }
  return *this;
}

Buffer::~Buffer() {
  if (!data_) return;
  if (device_.type == DeviceType::cpu) {
    std::free(data_);
  } else {
    cuda::device_free(device_.index, data_);
  }
}

void synchronize(Device device) {
  if (device.type == DeviceType::cuda) cuda::synchronize(device.index);
}

bool cuda_available() { return cuda::device_count() > 0; }

}  // namespace flashprefill
