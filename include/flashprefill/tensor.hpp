// flashprefill: non-owning tensor views. The public headers say nothing about CUDA.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace flashprefill {

enum class DType : uint8_t { bf16, fp16, fp32, int32, int64 };

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;  // CUDA ordinal; 0 for the CPU

  static constexpr Device cpu() { return {DeviceType::cpu, 0}; }
  static constexpr Device cuda(int ordinal = 0) { return {DeviceType::cuda, ordinal}; }
  friend constexpr bool operator==(Device, Device) = default;
};

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
std::string device_name(Device device);

// A strided view of at most 4 dimensions. Strides are in elements, not bytes.
struct TensorView {
  static constexpr int kMaxRank = 4;

  void* data = nullptr;
  DType dtype = DType::fp32;
  Device device{};
  int rank = 0;
  std::array<int64_t, kMaxRank> shape{};
  std::array<int64_t, kMaxRank> stride{};

  // A contiguous (row-major) view.
  static TensorView contiguous(void* data, DType dtype, Device device,
                               std::initializer_list<int64_t> shape);

  bool empty_view() const { return rank == 0; }  // "not given", as an optional argument
  int64_t size(int dim) const { return shape[dim]; }
  int64_t numel() const;
  bool is_contiguous() const;
  std::string shape_string() const;  // "[2, 4096, 32, 128]"

  template <typename T>
  T* ptr() const {
    return static_cast<T*>(data);
  }
};

// Copies bytes between any two devices (host <-> CUDA, CUDA <-> CUDA) and synchronises.
// Tools and tests use it; the hot path never does.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);

// Device memory owned by the caller of allocate(): freed by the destructor.
class Buffer {
 public:
  Buffer() = default;
  static Buffer allocate(Device device, size_t bytes);
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_{};
};

// Waits for all work on the device (no-op on the CPU). For tools and tests; the hot path never
// calls it.
void synchronize(Device device);

// True when the library was built with its CUDA backend and a CUDA device is visible.
bool cuda_available();

}  // namespace flashprefill
