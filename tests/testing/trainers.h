// Test helpers for several trainers in one test process, one Client per
// rank: run them side by side, read the params they see.
#pragma once

#include <memory>
#include <thread>
#include <vector>

#include "client/client.h"

namespace sherd::testing {

// Every param of `model` as `client` sees it, flattened in tensor order.
inline std::vector<float> FlatParams(Client& client, const ModelDef& model) {
  std::vector<float> out;
  for (const auto& t : model.tensors) {
    auto p = client.Param(t.name);
    out.insert(out.end(), p.begin(), p.end());
  }
  return out;
}

// Runs fn(rank, clients[rank]) for every rank on its own thread; returns
// when all have.
template <typename F>
void ForEachRank(std::vector<std::unique_ptr<Client>>& clients, F fn) {
  std::vector<std::thread> threads;
  for (size_t r = 0; r < clients.size(); ++r) {
    threads.emplace_back([&, r] { fn(static_cast<int>(r), clients[r]); });
  }
  for (std::thread& t : threads) t.join();
}

}  // namespace sherd::testing
