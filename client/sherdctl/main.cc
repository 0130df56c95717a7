// sherdctl: inspect shard servers, live. Flags in, one command run.
#include <CLI/CLI.hpp>

#include "client/sherdctl/checkpoint_commands.h"
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
  sherd::ctl::CheckpointOptions co;
  auto* ckpt = app.add_subcommand("checkpoint", "Save, list, verify, inspect and export checkpoints");
  ckpt->require_subcommand(1);
  auto* c_save = ckpt->add_subcommand("save", "Save every rank's state after its last step (through the servers)");
  c_save->add_flag("!--no-wait", co.wait, "Return once every rank has started, without waiting for the commit");
  auto* c_status = ckpt->add_subcommand("status", "Each rank's checkpoint state (through the servers)");
  auto* c_restore = ckpt->add_subcommand(
      "restore", "Restore a running cluster to a checkpoint: one transaction, all ranks or none (a rank that fails to commit rolls the others back)");
  c_restore->add_option("NAME", co.name, "Checkpoint name (ckpt-...) or newest")->required();
  auto* c_list = ckpt->add_subcommand("list", "Committed checkpoints in a directory (no server needed)");
  auto* c_verify = ckpt->add_subcommand("verify", "Check every checksum of a checkpoint without loading it");
  auto* c_inspect = ckpt->add_subcommand("inspect", "Statistics of one tensor's saved state");
  auto* c_export = ckpt->add_subcommand("export", "Write the params as one safetensors file");
  for (auto* sc : {c_list, c_verify, c_inspect, c_export}) {
    sc->add_option("--dir", co.dir, "Checkpoint directory (the server's --checkpoint-dir)")
        ->envname("SHERD_CHECKPOINT_DIR");
  }
  for (auto* sc : {c_verify, c_inspect, c_export}) {
    sc->add_option("NAME", co.name, "Checkpoint name (ckpt-...) under --dir, or its path")->required();
  }
  c_inspect->add_option("TENSOR", co.tensor, "Tensor name")->required();
  c_inspect->add_option("--state", co.state, "param, exp_avg or exp_avg_sq")
      ->check(CLI::IsMember({"param", "exp_avg", "exp_avg_sq"}))->capture_default_str();
  c_export->add_option("OUT", co.out, "Output .safetensors file")->required();
  CLI11_PARSE(app, argc, argv);
  if (*c_save) return sherd::ctl::RunCheckpointSave(g, co);
  if (*c_status) return sherd::ctl::RunCheckpointStatus(g);
  if (*c_restore) return sherd::ctl::RunCheckpointRestore(g, co);
  if (*c_list) return sherd::ctl::RunCheckpointList(g, co);
  if (*c_verify) return sherd::ctl::RunCheckpointVerify(g, co);
  if (*c_inspect) return sherd::ctl::RunCheckpointInspect(g, co);
  if (*c_export) return sherd::ctl::RunCheckpointExport(g, co);
  if (*status) return sherd::ctl::RunStatus(g);
  if (*tensors) return sherd::ctl::RunTensors(g);
  if (*where) return sherd::ctl::RunWhere(g, where_name);
  if (*inspect) return sherd::ctl::RunInspect(g, io);
  return 2;
}
