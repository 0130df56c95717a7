#include "server/checkpoint/fault_injection.h"

#include <atomic>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace sherd::internal {
namespace {

struct HookSlot {
  absl::Mutex mu;
  CheckpointFaultHook hook ABSL_GUARDED_BY(mu);
  // Lets production saves skip the mutex entirely.
  std::atomic<bool> set{false};
};

HookSlot& Slot() {
  static HookSlot* slot = new HookSlot;  // never destroyed: no exit-order race
  return *slot;
}

}  // namespace

void SetCheckpointFaultHook(CheckpointFaultHook hook) {
  HookSlot& slot = Slot();
  absl::MutexLock lock(&slot.mu);
  slot.hook = std::move(hook);
  slot.set.store(static_cast<bool>(slot.hook));
}

absl::Status ReachCheckpointStage(CheckpointStage stage) {
  HookSlot& slot = Slot();
  if (!slot.set.load(std::memory_order_acquire)) return absl::OkStatus();
  CheckpointFaultHook hook;
  {
    absl::MutexLock lock(&slot.mu);
    hook = slot.hook;
  }
  // Called unlocked: a hook may block (tests hold a save at a stage) or
  // replace itself.
  return hook ? hook(stage) : absl::OkStatus();
}

}  // namespace sherd::internal
