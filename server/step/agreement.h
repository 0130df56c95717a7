// Step agreement: before a multi-rank step touches any state, the ranks
// establish that they take the same step of the same model with the same
// hyperparameters, or every one of them refuses it with the same reason.
//
// Without it, a rank that disagrees goes straight into the reduce-scatter:
// different model sizes crash Gloo's I/O thread, the same size with other
// shapes or hyperparameters trains a mixed model, and a Step sent to one rank
// only breaks the collective for good. The agreement runs over rank 0's
// rendezvous store, not over the collective, so a rank that never arrives
// costs a timeout and an error, never a broken backend.
//
// Protocol, round n (a round is one agreement attempt; each rank counts its
// own rounds, and the counters stay equal because every rank reads every
// round's decision):
//   every rank   posts its v1::StepHeader at "step/<n>/h/<rank>"
//   rank 0       waits for every header until the timeout, compares them
//                (Decide) and writes the decision "step/<n>/d" with
//                SetIfAbsent
//   other ranks  wait for the decision until the timeout plus a grace; on
//                expiry they write a NO-GO themselves that lists rank 0 as
//                missing. SetIfAbsent makes the first decision written the
//                one every rank obeys.
//   A rank that refuses the step (its own checks failed) still posts, with
//   the reason, so that the others fail at once with it instead of waiting:
//   once a refusal is known, rank 0 waits at most a second more for the
//   other headers, and a refusing rank waits at most a second for rank 0's
//   decision before deciding the round itself (listing every other rank as
//   missing). A lone refused call thus returns within a second.
//   A rank listed as missing in a decision (rank 0: one that finds the
//   decision already written when it arrives) came after its round was given
//   up: that round was not its own, so it moves to round n+1 and posts
//   there. A GO at round n means every rank has posted at n, so rank 0 then
//   erases the keys of every earlier round.
//
// The model is compared by a fingerprint (FNV-1a of its description); each
// rank posts its description once at "step/model/<rank>", and rank 0 reads
// them only when fingerprints differ, to name the first difference.
//
// Errors, the same on every rank: FAILED_PRECONDITION when the ranks
// disagree (naming the first difference), the refusing rank's own code when
// a rank refused the step (its checks failed), DEADLINE_EXCEEDED when a rank
// did not send the step in time, UNAVAILABLE when rank 0's store is
// unreachable. In every case no state was touched.
//
// Threads: Agree is called by the step path only (under the step lock).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "server/rendezvous/kv_store.h"
#include "server/state/model_state.h"
#include "sherd/v1/peer.pb.h"

namespace sherd {

// The model as the ranks compare it: one line per field that must match
// (name, param groups with their hyperparameters, tensors with shape, dtype
// and group), in registration order.
std::string DescribeModel(const ModelSpec& spec);
uint64_t Fingerprint(const std::string& description);

// Rank 0's comparison of one round's headers (nullopt: that rank posted
// none in time). `description(r)` returns rank r's model description, or
// empty if unknown; it is called only when fingerprints differ.
v1::StepDecision Decide(const std::vector<std::optional<v1::StepHeader>>& headers,
                        absl::Duration timeout,
                        const std::function<std::string(int rank)>& description);

class StepAgreement {
 public:
  StepAgreement(std::shared_ptr<KvStore> store, int rank, int world_size,
                absl::Duration timeout);

  // Posts `mine` (its rank field is set here) and returns once the round
  // is decided: OK when every rank agreed to go ahead. `model_description`
  // is this rank's DescribeModel (empty when no model is registered).
  absl::Status Agree(v1::StepHeader mine, const std::string& model_description);

  int64_t round() const { return round_; }

 private:
  // One round's decision. `absent` is set when the round was given up
  // before this rank arrived (it then moves on to the next round).
  absl::StatusOr<v1::StepDecision> DecideAsCoordinator(const v1::StepHeader& mine,
                                                       bool* absent);
  absl::StatusOr<v1::StepDecision> AwaitDecision(const v1::StepHeader& mine, bool* absent);
  void EraseRoundsBefore(int64_t round);

  const std::shared_ptr<KvStore> store_;
  const int rank_;
  const int world_size_;
  const absl::Duration timeout_;
  int64_t round_ = 0;
  int64_t erased_below_ = 0;   // rank 0: rounds below this have no keys
  uint64_t posted_model_ = 0;  // fingerprint of the description posted
};

}  // namespace sherd
