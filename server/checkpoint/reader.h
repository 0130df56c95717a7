// Reading a committed checkpoint, onto any world size.
//
// The flat layout depends on the world size only through the final padding,
// so a rank of a new world W' loads its slice by reading exactly the flat
// element range it now owns, from whichever old ranks' files hold it
// (pread at offsets; no gathering). Every chunk a read touches is verified
// against the MANIFEST's checksum first (a chunk only partly needed is read
// whole to verify it), so corrupt bytes are DATA_LOSS, never loaded.
//
//   ASSIGN_OR_RETURN(CheckpointReader ckpt, CheckpointReader::Open(dir));
//   RETURN_IF_ERROR(ckpt.CheckModel(spec));
//   RETURN_IF_ERROR(ckpt.LoadSlice(layout, rank, master, exp_avg, exp_avg_sq));
//   int64_t step = ckpt.manifest().step;
//
// A loader that gets an error from any rank must fall back to an older
// checkpoint on every rank (FindNewestLoadable), never mix two.
// Threads: a CheckpointReader is immutable after Open; its const methods
// may run concurrently (each opens its own descriptors).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/layout.h"
#include "server/checkpoint/format.h"
#include "server/checkpoint/manifest.h"

namespace sherd {

// progress(bytes_done, bytes_total) during a verification.
using VerifyProgress = std::function<void(int64_t, int64_t)>;

class CheckpointReader {
 public:
  // Reads and validates <dir>/MANIFEST. NOT_FOUND if there is none (not a
  // committed checkpoint), DATA_LOSS if it is corrupt.
  static absl::StatusOr<CheckpointReader> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const Manifest& manifest() const { return manifest_; }
  std::string manifest_path() const;
  std::string shard_path(int old_rank) const;

  // FAILED_PRECONDITION naming the MANIFEST if it holds another model.
  absl::Status CheckModel(const ModelSpec& spec) const;

  // Reads saved flat elements [range.begin, range.end) into the arrays
  // (range.size() floats each; nullptr skips that state). Elements at or
  // past the saved total (padding of a different world size) read as zero.
  // On error the arrays hold partial data: do not use them.
  absl::Status LoadRange(Range range, float* param, float* exp_avg,
                         float* exp_avg_sq) const;
  // LoadRange of `layout.Slice(rank)`, after checking that `layout` is of
  // the saved model with the saved alignment (FAILED_PRECONDITION if not).
  absl::Status LoadSlice(const Layout& layout, int rank, float* param,
                         float* exp_avg, float* exp_avg_sq) const;

  // Cheap: every shard file exists with its size and a sound header.
  absl::Status CheckFiles() const;
  // Every checksum of every file, without loading anything.
  absl::Status Verify(const VerifyProgress& progress = nullptr) const;

 private:
  CheckpointReader() = default;
  std::string dir_;
  Manifest manifest_;
};

// <dir>/MANIFEST, parsed and validated (see CheckpointReader::Open).
absl::StatusOr<Manifest> ReadManifest(const std::string& dir);
// CheckpointReader::Open(dir) then Verify(progress).
absl::Status VerifyCheckpoint(const std::string& dir,
                              const VerifyProgress& progress = nullptr);

}  // namespace sherd
