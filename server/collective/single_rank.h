// The trivial backend for world size 1: every collective is the identity.
#pragma once
#include <memory>
#include "server/collective/collective.h"
namespace sherd {
std::unique_ptr<Collective> CreateSingleRankCollective();
}  // namespace sherd
