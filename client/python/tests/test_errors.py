"""Bad inputs get clear errors, bounded in time, on every rank."""
import os
import textwrap

import pytest

from conftest import free_port, python, torchrun


def test_no_server_reachable_names_the_address_and_how_to_start_one():
    port = free_port()  # nothing listens there
    out = python(textwrap.dedent("""
        import sherd.torch as sherd
        try:
            sherd.init(timeout_s=2)
        except sherd.errors.Unavailable as e:
            print("ERROR", e)
    """), env={"SHERD_SERVER": f"127.0.0.1:{port}"})
    assert out.returncode == 0, out.stdout
    assert f"127.0.0.1:{port}" in out.stdout and "sherd-server" in out.stdout, out.stdout


def test_ranks_that_build_different_models_are_refused_on_every_rank():
    run = torchrun(2, {"steps": 1, "hidden_by_rank": {"1": 20}})
    assert run.returncode != 0
    # Both ranks raise, naming the first difference (a tensor's shape).
    msg = ("ranks build different models: rank 1 differs from rank 0: tensor #0 is 'pos' "
           "[12, 16] in group 'default' on rank 0, 'pos' [12, 20] in group 'default' on rank 1")
    assert run.output.count(msg) == 2, run.output


def test_ranks_seeded_differently_start_from_one_model():
    run = torchrun(2, {"steps": 2, "seed_per_rank": True})
    assert run.returncode == 0, run
    assert run.results[0]["p_digest"] == run.results[1]["p_digest"]
    assert "ranks initialized the model differently" in run.output


def test_a_rank_that_stops_stepping_fails_the_others_within_the_timeout(tmp_path):
    done = str(tmp_path / "done")
    run = torchrun(2, {"steps": 3, "stall_rank": 1, "stall_step": 1, "done_file": done,
                       "config": {"timeout_s": 5}})
    r0 = run.results.get(0)
    assert r0 is not None, run
    assert "step_error" in r0, r0
    # The servers' step agreement names the rank; nothing was applied.
    assert r0["step_error"].startswith("DeadlineExceeded"), r0
    assert "rank 1 did not take part in step" in r0["step_error"], r0
    assert r0["step_error_after_s"] < 30, r0


def test_a_parameter_that_is_not_part_of_the_registered_model_is_refused():
    run = torchrun(1, {"steps": 1, "add_group": True, "replace_param": True})
    r = run.results[0]
    assert r["add_group_error"].startswith("FailedPrecondition"), r
    assert "not part of the registered model" in r["step_error"], r
    assert "head.weight" in r["step_error"], r


def test_a_grad_scale_whose_reciprocal_overflows_is_refused():
    run = torchrun(1, {"steps": 1, "grad_scale": 1e-40})
    r = run.results[0]
    assert r["step_error"].startswith("InvalidArgument") and "reciprocal" in r["step_error"], r


@pytest.mark.parametrize("fake,expect", [
    ("__version__ = '1.13.0'\n", "needs PyTorch 2.1 or newer, found 1.13.0"),
    ("raise ImportError('No module named torch')\n", "needs PyTorch 2.1 or newer: pip install"),
])
def test_torch_missing_or_too_old_is_a_clear_import_error(tmp_path, fake, expect):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(fake)
    out = python("import sherd.torch", env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode != 0
    assert "ImportError" in out.stdout and expect in out.stdout, out.stdout
