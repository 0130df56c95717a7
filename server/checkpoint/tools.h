// Offline tools over a committed checkpoint, for sherdctl and operators:
// statistics of one tensor's saved state, and export of the fp32 master
// params to one safetensors file. Neither needs a running server; both read
// through CheckpointReader, so every byte they use is checksum-verified.
//
//   ASSIGN_OR_RETURN(TensorInspection t,
//                    InspectTensor(dir, "fc1.weight", StateArray::kExpAvgSq));
//   RETURN_IF_ERROR(ExportSafetensors(dir, "/tmp/model.safetensors"));
//
// Safetensors layout (docs/checkpoint_format.md): u64 little-endian header
// length N, N bytes of JSON {"__metadata__": {...}, name: {"dtype": "F32",
// "shape": [...], "data_offsets": [begin, end]}, ...} padded with spaces to
// a multiple of 8, then the tensors' raw little-endian fp32 bytes in layout
// order; offsets are relative to the end of the header.
// Threads: stateless; calls may run concurrently.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"
#include "common/stats.h"
#include "server/checkpoint/format.h"

namespace sherd {

struct TensorInspection {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::kFloat32;  // as registered; saved state is fp32
  int group = 0;
  int64_t numel = 0;
  StateArray state = StateArray::kParam;
  int64_t step = 0;  // of the checkpoint
  RangeStats stats;
};

// NOT_FOUND if the checkpoint has no tensor of that name.
absl::StatusOr<TensorInspection> InspectTensor(const std::string& dir,
                                               absl::string_view tensor,
                                               StateArray state);

struct ExportResult {
  int64_t tensors = 0;
  int64_t bytes = 0;  // of the file
};

// Writes `out_file` (via a temp file, fsync and rename, so a failed export
// never leaves a half file under that name).
absl::StatusOr<ExportResult> ExportSafetensors(const std::string& dir,
                                               const std::string& out_file);

}  // namespace sherd
