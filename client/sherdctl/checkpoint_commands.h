// `sherdctl checkpoint ...`: save through the servers (every rank, with
// progress), and list / verify / inspect / export straight from the
// checkpoint directory, with no server running.
#pragma once

#include <string>

#include "client/sherdctl/commands.h"

namespace sherd::ctl {

struct CheckpointOptions {
  std::string dir;      // the checkpoint root (offline commands)
  std::string name;     // ckpt-... (or a path)
  std::string tensor;
  std::string state = "param";
  std::string out;      // export target
  bool wait = true;     // save: wait for the commit
};

int RunCheckpointSave(const GlobalOptions& g, const CheckpointOptions& o);
int RunCheckpointStatus(const GlobalOptions& g);
int RunCheckpointRestore(const GlobalOptions& g, const CheckpointOptions& o);
int RunCheckpointList(const GlobalOptions& g, const CheckpointOptions& o);
int RunCheckpointVerify(const GlobalOptions& g, const CheckpointOptions& o);
int RunCheckpointInspect(const GlobalOptions& g, const CheckpointOptions& o);
int RunCheckpointExport(const GlobalOptions& g, const CheckpointOptions& o);

}  // namespace sherd::ctl
