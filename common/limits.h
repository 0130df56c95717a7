// Limits that several layers must enforce identically.
#pragma once

#include <cstddef>

namespace sherd {

// The most dimensions a tensor may have: the checkpoint manifest's limit,
// checked at registration too (Layout::Build), so that every model that
// trains can be saved and loaded again.
inline constexpr size_t kMaxTensorDims = 64;

}  // namespace sherd
