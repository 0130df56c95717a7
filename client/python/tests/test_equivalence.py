"""N steps of a small transformer through sherd equal torch.optim.AdamW run
single-process on the rank-averaged gradient, within 1e-5 relative, on 1
and 2 ranks, for each training option."""
import pytest

from conftest import torchrun

CASES = {
    "plain": {},
    "clipping": {"clip": 0.05},
    "grad_scaler_with_a_skipped_overflow": {"scaler": True, "overflow_step": 2},
    "lr_scheduler": {"scheduler": True},
    "per_group_weight_decay_and_lr": {"groups": True},
    "bf16_params": {"bf16": True},
    "accumulation": {"accum": 3},
}


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torch_adamw(world, case):
    opts = dict(CASES[case], steps=5)
    run = torchrun(world, opts)
    assert run.returncode == 0, run
    assert sorted(run.results) == list(range(world)), run
    for r in run.results.values():
        assert r["rel_diff"] < 1e-5, (case, r)
        assert r["params_are_master"], r
        if case == "grad_scaler_with_a_skipped_overflow":
            # One rank's inf skips the step on every rank, as torch does.
            assert (r["applied"], r["skipped"]) == (4, 1), r
        else:
            assert (r["applied"], r["skipped"]) == (5, 0), r
    if case == "grad_scaler_with_a_skipped_overflow":
        # Every rank backed off and grew its scale identically.
        assert len({r["scale"] for r in run.results.values()}) == 1, run.results
        assert run.results[0]["scale"] != 2.0 ** 10
    if case == "lr_scheduler":
        assert run.results[0]["lrs"][0] != 1e-2  # the scheduler moved it
