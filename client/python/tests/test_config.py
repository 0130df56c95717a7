"""The config: sherd's keys and SageMaker model parallel v2's, from a dict
or a JSON/YAML file; unknown keys and unbuilt features are errors."""
import json

import pytest

from sherd import config


def test_known_keys_from_a_dict_and_a_json_file(tmp_path):
    c = config.parse({"max_grad_norm": 1, "hybrid_shard_degree": 0}, world_size=2)
    assert c.max_grad_norm == 1.0
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"grad_accumulation": 4, "hybrid_shard_degree": 2,
                                "random_seed": 7}))
    c = config.parse(str(path), world_size=2, checkpoint_every=5)
    assert (c.grad_accumulation, c.random_seed, c.checkpoint_every) == (4, 7, 5)


def test_an_unknown_key_names_it_and_the_known_ones():
    with pytest.raises(ValueError) as e:
        config.parse({"max_grad_nrom": 1.0})
    assert "'max_grad_nrom'" in str(e.value) and "max_grad_norm" in str(e.value)


@pytest.mark.parametrize("key,value", [
    ("sm_activation_offloading", True),
    ("activation_loading_horizon", 2),
    ("hybrid_shard_degree", 2),
    ("tensor_parallel_degree", 2),
    ("reduce_dtype", "bfloat16"),
])
def test_a_known_key_that_is_not_built_raises_not_implemented(key, value):
    with pytest.raises(NotImplementedError) as e:
        config.parse({key: value}, world_size=4)
    assert key in str(e.value) and "not built" in str(e.value)


def test_bad_values_are_refused():
    with pytest.raises(TypeError):
        config.parse({"grad_accumulation": "4"})
    with pytest.raises(ValueError):
        config.parse({"grad_accumulation": 0})
    with pytest.raises(ValueError):
        config.parse({"hybrid_shard_degree": 9}, world_size=2)
    with pytest.raises(ValueError):
        config.parse({"param_dtype": "float16"})
