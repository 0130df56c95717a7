// sherdctl: inspect shard servers, live. Flags in, one command run.
#include <CLI/CLI.hpp>

#include "client/sherdctl/commands.h"

int main(int argc, char** argv) {
  using sherd::ctl::GlobalOptions;
  GlobalOptions g;
  sherd::ctl::InspectOptions io;
  std::string where_name;
  CLI::App app{"sherdctl: shows who owns what in a sherd cluster and inspects "
               "any shard's state while it runs."};
  app.require_subcommand(1);
  app.add_option("--server,-s", g.server, "Shard server address (host:port or unix:/path)")
      ->envname("SHERD_SERVER")->capture_default_str();
  app.add_flag("--json", g.json, "Print JSON instead of tables");
  app.add_option("--timeout", g.timeout_s, "Seconds to wait for the server")
      ->check(CLI::PositiveNumber)->capture_default_str();
  auto* status = app.add_subcommand("status", "Health, step, owned range and memory of each rank");
  auto* tensors = app.add_subcommand("tensors", "The registered tensors and their layout");
  auto* where = app.add_subcommand("where", "Which ranks hold which elements of a tensor");
  where->add_option("NAME", where_name, "Tensor name")->required();
  auto* inspect = app.add_subcommand("inspect", "Statistics or values of one state of a tensor");
  inspect->add_option("NAME", io.name, "Tensor name")->required();
  inspect->add_option("--state", io.state, "param, grad, exp_avg or exp_avg_sq")
      ->check(CLI::IsMember({"param", "grad", "exp_avg", "exp_avg_sq"}))
      ->capture_default_str();
  bool stats_only = false;
  inspect->add_flag("--stats", stats_only, "Statistics only (the default)");
  inspect->add_option("--values", io.max_values, "Also print the first N values")
      ->each([&](const std::string&) { io.values = true; });
  inspect->add_option("--begin", io.begin, "First element of the range")
      ->check(CLI::NonNegativeNumber);
  inspect->add_option("--count", io.count, "Number of elements (default: to the end)")
      ->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);
  if (*status) return sherd::ctl::RunStatus(g);
  if (*tensors) return sherd::ctl::RunTensors(g);
  if (*where) return sherd::ctl::RunWhere(g, where_name);
  if (*inspect) return sherd::ctl::RunInspect(g, io);
  return 2;
}
