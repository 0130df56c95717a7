"""The model's parameters and gradients are views of the servers' shared
buffers: nothing goes through the gRPC data plane."""
from conftest import torchrun


def test_params_and_grads_live_in_shared_memory():
    run = torchrun(2, {"steps": 3, "check_zero_copy": True})
    assert run.returncode == 0, run
    for r in run.results.values():
        assert r["params_in_P"] and r["grads_in_G"], r
        assert r["status_ranks"] == 2
        assert r["inline_bytes"] == 0, r
