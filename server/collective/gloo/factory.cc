// Builds the Gloo backend: a TCP device on options.hostname, a rendezvous
// through our KvStore, and a full mesh of pairs. Everything Gloo throws while
// doing so becomes a Status here; nothing escapes to the caller.
#include "server/collective/gloo/factory.h"

#include <signal.h>

#include <chrono>
#include <exception>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "gloo/common/error.h"
#include "gloo/common/logging.h"
#include "gloo/rendezvous/context.h"
#include "gloo/transport/tcp/device.h"
#include "server/collective/gloo/gloo_collective.h"
#include "server/collective/gloo/store_adapter.h"

namespace sherd {

absl::StatusOr<std::unique_ptr<Collective>> CreateGlooCollective(
    KvStore& store, int rank, int world_size, const GlooOptions& options) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CreateGlooCollective: bad rank ", rank, " of world size ",
        world_size));
  }
  const std::chrono::milliseconds timeout =
      absl::ToChronoMilliseconds(options.timeout);
  if (timeout.count() <= 0) {
    return absl::InvalidArgumentError(
        "CreateGlooCollective: timeout must be at least 1 ms");
  }
  if (options.reduce_scatter_cache_size < 1) {
    return absl::InvalidArgumentError(
        "CreateGlooCollective: reduce_scatter_cache_size must be at least 1");
  }
  if (options.hostname.empty()) {
    return absl::InvalidArgumentError("CreateGlooCollective: empty hostname");
  }

  // Gloo's TCP pairs write to sockets without MSG_NOSIGNAL: a peer that
  // dies mid-collective would kill this process with SIGPIPE instead of
  // failing the call with an I/O error. Every process that uses this backend
  // therefore ignores SIGPIPE (write then returns EPIPE).
  static std::once_flag ignore_sigpipe;
  std::call_once(ignore_sigpipe, [] { signal(SIGPIPE, SIG_IGN); });
  std::string error;
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = options.hostname;
    std::shared_ptr<gloo::transport::Device> device =
        gloo::transport::tcp::CreateDevice(attr);
    auto context =
        std::make_shared<gloo::rendezvous::Context>(rank, world_size);
    // Set before connecting: the pairs copy the context's timeout when they
    // are created, and it bounds every later wait on them.
    context->setTimeout(timeout);
    internal::GlooStoreAdapter adapter(store, options.prefix, options.timeout);
    context->connectFullMesh(adapter, device);
    return std::unique_ptr<Collective>(
        std::make_unique<internal::GlooCollective>(
            std::move(context), timeout,
            static_cast<size_t>(options.reduce_scatter_cache_size)));
  } catch (const gloo::IoException& e) {
    error = absl::StrCat("I/O error or timeout: ", e.what());
  } catch (const gloo::EnforceNotMet& e) {
    error = absl::StrCat("internal check failed: ", e.what());
  } catch (const std::exception& e) {
    error = e.what();
  } catch (...) {
    error = "unknown exception";
  }
  return absl::UnavailableError(absl::StrCat(
      "gloo rendezvous failed for rank ", rank, "/", world_size, " on ",
      options.hostname, " (store prefix \"", options.prefix, "\"): ", error));
}

}  // namespace sherd
