"""A test trainer that goes on through a lost shard server: it steps a small
model to `steps`, and when a step raises sherd.errors.Rewound (the cluster
lost a server, was rebuilt and rewound to its newest checkpoint) it
repositions its data at the step the cluster continues from. The batches
depend on the step only, so a replayed step computes what its first try did.

    torchrun --nproc-per-node 2 recover.py '{"steps": 10}'

Prints "STEP <rank> <step>" after each step, "REWOUND <rank> <step>" after
each rewind, and "RESULT <json>" (a digest of the params) at the end.
"""
import hashlib
import json
import os
import sys

import torch

import sherd.torch as st
from sherd import errors

def say(line):
    os.write(1, (line + "\n").encode())  # one write: ranks never interleave


opts = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
torch.set_num_threads(1)
st.init(opts.get("config", {}))
R = st.rank()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
opt = st.AdamW(model, lr=1e-2)
step, rewinds = opt.info["next_step"], []
while step <= opts.get("steps", 10):
    g = torch.Generator().manual_seed(1000 * step + R)
    x, y = torch.randn(8, 16, generator=g), torch.randn(8, 1, generator=g)
    torch.nn.functional.mse_loss(model(x), y).backward()
    try:
        opt.step()
    except errors.Rewound as r:
        rewinds.append([step, r.next_step, r.checkpoint])
        say(f"REWOUND {R} {r.next_step}")
        step = r.next_step
        continue
    opt.zero_grad()
    say(f"STEP {R} {step}")
    step += 1
# A digest of the params' bytes (bit-exact comparison; a short line, which
# torchrun's merged output never interleaves).
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters()))
say("RESULT " + json.dumps({"rank": R, "params": digest.hexdigest(), "rewinds": rewinds}))
st.shutdown()
