// The per-(device, stream) workspace cache used when a caller passes no Workspace.
#pragma once

#include <cstddef>

#include "flashprefill/tensor.hpp"

namespace flashprefill::detail {

// Returns at least `bytes` of scratch on `device` for calls on `stream`, reused across those calls
// (they are stream-ordered, so one never overlaps the next); grows, never shrinks. One buffer per
// stream, so calls on two streams never share scratch. Growing a CUDA buffer frees the old one
// (cudaFree waits for the device), so no queued call still reads it. CPU calls ignore the stream.
void* cached_workspace(Device device, const void* stream, size_t bytes);

}  // namespace flashprefill::detail
