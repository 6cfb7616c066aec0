// The per-device workspace cache used when a caller passes no Workspace.
#pragma once

#include <cstddef>

#include "flashprefill/tensor.hpp"

namespace flashprefill::detail {

// Returns at least `bytes` of scratch on `device`, reused across calls; grows, never shrinks.
// Growing a CUDA buffer frees the old one, so a call must not overlap another call on the same
// device that still reads the old workspace (the library's calls are stream-ordered).
void* cached_workspace(Device device, size_t bytes);

}  // namespace flashprefill::detail
