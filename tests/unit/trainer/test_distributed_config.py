"""spec.distributed → FSDP / DeepSpeed arguments, and the empty-weights check. Pure: no
process group; tests/trainer/test_distributed.py runs the generated configs for real."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from ftapi import InvalidSpecError, parse_job
from fttestkit.builders import make_job
from fttrainer.arguments import trainer_config_kwargs
from fttrainer.distributed import (
    EmptyWeightsError,
    build_deepspeed_config,
    check_saved_weights,
    deep_merge,
)

LAYERS = ("LlamaDecoderLayer",)


def _kwargs(*, cuda: bool = True, bf16: bool = True, **changes: Any) -> dict[str, Any]:
    """trainer_config_kwargs for the minimal job with `a__b=value` changes."""
    job = make_job()
    for path, value in changes.items():
        job.set(path.replace("__", "."), value)
    spec = parse_job(job.obj()).spec
    return trainer_config_kwargs(
        spec, output_dir="/tmp/x", cuda=cuda, bf16_supported=bf16, layer_classes=LAYERS
    )


def _fsdp(**changes: Any) -> dict[str, Any]:
    """FSDP for full-weight training (FSDP's own checkpointing applies)."""
    return _kwargs(distributed__strategy="fsdp", method={"type": "full"}, **changes)


def _ds(**changes: Any) -> dict[str, Any]:
    config = _kwargs(distributed__strategy="deepspeed", **changes)["deepspeed"]
    assert isinstance(config, dict)
    return config


@pytest.mark.parametrize("strategy", ["auto", "ddp"])
def test_ddp_strategies_add_no_sharding(strategy: str) -> None:
    kwargs = _kwargs(distributed__strategy=strategy)
    assert not {"fsdp", "fsdp_config", "deepspeed"} & kwargs.keys()
    assert kwargs["activation_checkpointing"] is True  # GPU default


def test_fsdp_defaults_are_fsdp2_sharding_each_decoder_layer() -> None:
    kwargs = _fsdp()
    assert kwargs["fsdp"] is True
    assert kwargs["fsdp_config"] == {
        "version": 2,
        "reshard_after_forward": True,
        "cpu_offload": False,
        "activation_checkpointing": True,  # the GPU default, in FSDP's flavour
        "state_dict_type": "FULL_STATE_DICT",
        "cpu_ram_efficient_loading": False,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
    }
    # transformers refuses its own checkpointing next to FSDP's.
    assert kwargs["activation_checkpointing"] is False


@pytest.mark.parametrize(
    ("changes", "key", "value"),
    [
        ({"distributed__fsdp": {"reshardAfterForward": False}}, "reshard_after_forward", False),
        ({"distributed__fsdp": {"cpuOffload": True}}, "cpu_offload", True),
        ({"training__gradientCheckpointing": False}, "activation_checkpointing", False),
        (
            {"training__gradientCheckpointing": False, "distributed__fsdp": {
                "activationCheckpointing": True}},
            "activation_checkpointing",
            True,
        ),
    ],
    ids=["reshard-after-forward", "cpu-offload", "checkpointing-off", "fsdp-checkpointing"],
)  # fmt: skip
def test_each_fsdp_knob_reaches_fsdp_config(
    changes: dict[str, Any], key: str, value: object
) -> None:
    kwargs = _fsdp(**changes)
    assert kwargs["fsdp_config"][key] == value
    assert kwargs["activation_checkpointing"] is False


@pytest.mark.parametrize("method", ["lora", "dora", "prompt"])
@pytest.mark.parametrize(
    "changes",
    [{}, {"distributed__fsdp": {"activationCheckpointing": True},
          "training__gradientCheckpointing": False}],
    ids=["resolved", "fsdp-knob"],
)  # fmt: skip
def test_fsdp_adapters_checkpoint_with_the_models_own_never_fsdps_wrapper(
    method: str, changes: dict[str, Any]
) -> None:
    """FSDP's checkpoint_wrapper renames every parameter (`_checkpoint_wrapped_module.`),
    which PEFT's save does not strip: the adapter was saved empty on an H100. Adapters get
    the model's own checkpointing, whichever knob asked for it."""
    kwargs = _kwargs(distributed__strategy="fsdp", method={"type": method}, **changes)
    assert kwargs["fsdp_config"]["activation_checkpointing"] is False
    assert kwargs["activation_checkpointing"] is True
    off = _kwargs(distributed__strategy="fsdp", method={"type": method},
                  training__gradientCheckpointing=False)  # fmt: skip
    assert (off["fsdp_config"]["activation_checkpointing"], off["activation_checkpointing"]) == (
        False, False)  # fmt: skip


def test_fsdp_without_known_layer_classes_leaves_accelerate_its_fallback() -> None:
    spec = parse_job(make_job().set("distributed.strategy", "fsdp").obj()).spec
    kwargs = trainer_config_kwargs(spec, output_dir="/x", cuda=True, bf16_supported=True)
    assert "transformer_layer_cls_to_wrap" not in kwargs["fsdp_config"]


def test_fsdp_on_cpu_is_refused_not_silently_ddp() -> None:
    with pytest.raises(ValueError, match="fsdp needs GPUs"):
        _fsdp(cuda=False)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage(stage: int) -> None:
    zero = _ds(distributed__deepspeed={"zeroStage": stage})["zero_optimization"]
    assert zero["stage"] == stage
    # Only ZeRO-3 partitions weights, so only it needs them gathered to save.
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) is (stage == 3)
    assert ("stage3_prefetch_bucket_size" in zero) is (stage == 3)


def test_defaults_are_zero_2_with_auto_values_for_transformers() -> None:
    config = _ds()
    assert config["zero_optimization"] == {"stage": 2, "reduce_bucket_size": "auto"}
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size",
                "gradient_accumulation_steps", "gradient_clipping"):  # fmt: skip
        assert config[key] == "auto", key
    assert "optimizer" not in config  # the Trainer's own optimizer and scheduler


def test_offloading() -> None:
    config = _ds(distributed__deepspeed={
        "zeroStage": 3, "offloadOptimizer": "cpu", "offloadParameters": "cpu"})  # fmt: skip
    zero = config["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    # DeepSpeed refuses ZeRO-Offload with a torch optimizer: its CPU AdamW takes over.
    assert config["optimizer"]["type"] == "AdamW"
    assert set(config["optimizer"]["params"].values()) == {"auto"}
    only_optimizer = _ds(distributed__deepspeed={"offloadOptimizer": "cpu"})
    assert "offload_param" not in only_optimizer["zero_optimization"]


def test_offloading_the_optimizer_refuses_an_optimizer_it_would_replace() -> None:
    with pytest.raises(ValueError, match=r"training\.optimizer adafactor"):
        _ds(distributed__deepspeed={"offloadOptimizer": "cpu"}, training__optimizer="adafactor")


@pytest.mark.parametrize(
    ("cuda", "bf16_supported", "precision", "expected"),
    [
        (True, True, "auto", (True, False)),
        (True, False, "auto", (False, True)),
        (False, False, "auto", (False, False)),
        (True, True, "fp16", (False, True)),
        (True, True, "fp32", (False, False)),
    ],
    ids=["gpu-bf16", "gpu-fp16", "cpu-fp32", "explicit-fp16", "explicit-fp32"],
)
def test_precision_sections_agree_with_the_trainer_flags(
    cuda: bool, bf16_supported: bool, precision: str, expected: tuple[bool, bool]
) -> None:
    kwargs = _kwargs(cuda=cuda, bf16=bf16_supported, training__precision=precision,
                     distributed__strategy="deepspeed")  # fmt: skip
    config = kwargs["deepspeed"]
    assert (config["bf16"]["enabled"], config["fp16"]["enabled"]) == expected
    # transformers fails the run when these disagree with its own bf16/fp16 flags.
    assert (kwargs["bf16"], kwargs["fp16"]) == expected


def test_deepspeed_keeps_the_models_own_checkpointing() -> None:
    assert _kwargs(distributed__strategy="deepspeed")["activation_checkpointing"] is True
    off = _kwargs(distributed__strategy="deepspeed", training__gradientCheckpointing=False)
    assert off["activation_checkpointing"] is False


def test_raw_config_wins_and_merges_key_by_key() -> None:
    raw = {
        "zero_optimization": {"reduce_bucket_size": 50_000_000, "overlap_comm": False},
        "gradient_clipping": 0.5,
        "communication_data_type": "fp32",
    }
    config = _ds(distributed__deepspeed={"zeroStage": 3, "config": raw})
    zero = config["zero_optimization"]
    assert (zero["reduce_bucket_size"], zero["overlap_comm"]) == (50_000_000, False)
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert config["gradient_clipping"] == 0.5
    assert config["communication_data_type"] == "fp32"
    assert config["train_batch_size"] == "auto"


def test_raw_config_raising_the_stage_to_3_still_gets_the_gather_flag() -> None:
    config = _ds(distributed__deepspeed={"config": {"zero_optimization": {"stage": 3}}})
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize(
    "key",
    ["stage3_gather_16bit_weights_on_model_save", "gather_16bit_weights_on_model_save",
     "stage3_gather_fp16_weights_on_model_save"],
)  # fmt: skip
def test_a_user_who_sets_the_gather_flag_in_any_spelling_keeps_it(key: str) -> None:
    raw = {"zero_optimization": {key: False}}
    zero = _ds(distributed__deepspeed={"zeroStage": 3, "config": raw})["zero_optimization"]
    assert zero[key] is False
    assert [k for k in zero if "gather" in k] == [key]


def test_the_raw_config_is_not_changed() -> None:
    spec = parse_job(make_job().set("distributed", {"strategy": "deepspeed", "deepspeed": {
        "config": {"zero_optimization": {"stage": 3}}}}).obj()).spec  # fmt: skip
    deepspeed = spec.distributed.deepspeed
    assert deepspeed is not None
    build_deepspeed_config(deepspeed, precision="bf16")
    assert deepspeed.config == {"zero_optimization": {"stage": 3}}


def test_deep_merge() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    merged = deep_merge(base, {"a": {"c": [3]}, "e": {"f": 1}})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 1, "e": {"f": 1}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert deep_merge({"a": {"b": 1}}, {"a": "auto"}) == {"a": "auto"}


# The empty-weights check reads safetensors headers; these files are written in that
# format by hand (8-byte length, JSON header, data) so the test needs no torch.


def _write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"\0" * offset)


LORA = "base_model.model.model.layers.0.self_attn.q_proj"


def test_a_trained_adapter_passes(tmp_path: Path) -> None:
    lora = {f"{LORA}.lora_A.weight": [8, 64], f"{LORA}.lora_B.weight": [64, 8]}
    _write_safetensors(tmp_path / "adapter_model.safetensors", lora)
    shapes = check_saved_weights(tmp_path)
    assert shapes == {f"{LORA}.lora_A.weight": (8, 64), f"{LORA}.lora_B.weight": (64, 8)}


def test_zero3_placeholders_saved_ungathered_fail(tmp_path: Path) -> None:
    _write_safetensors(tmp_path / "adapter_model.safetensors",
                       {f"{LORA}.lora_A.weight": [0], f"{LORA}.lora_B.weight": [0]})  # fmt: skip
    with pytest.raises(EmptyWeightsError, match=r"2 of 2 saved tensors .* are empty"):
        check_saved_weights(tmp_path)


def test_one_empty_tensor_is_enough_to_fail(tmp_path: Path) -> None:
    _write_safetensors(tmp_path / "model.safetensors", {"a": [4, 4], "b": [0, 4]})
    with pytest.raises(EmptyWeightsError, match=r"1 of 2 .*\(b\)"):
        check_saved_weights(tmp_path)


def test_no_weight_file_fails(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(EmptyWeightsError, match="no weights were saved"):
        check_saved_weights(tmp_path)
    _write_safetensors(tmp_path / "adapter_model.safetensors", {})
    with pytest.raises(EmptyWeightsError, match="no weights were saved"):
        check_saved_weights(tmp_path)


def test_sharded_full_models_are_read_through_their_index(tmp_path: Path) -> None:
    _write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": [2, 2]})
    _write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"b": [0]})
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(EmptyWeightsError, match=r"1 of 2 .*\(b\)"):
        check_saved_weights(tmp_path)


def test_a_top_level_typo_in_the_raw_config_is_an_error_with_the_nearest_key() -> None:
    """DeepSpeed ignores keys it does not read: `zero_optimisation` would train without ZeRO."""
    job = make_job().set("distributed", {"strategy": "deepspeed", "deepspeed": {"config": {
        "zero_optimisation": {"stage": 3}, "bf16": {"enabled": True}}}})  # fmt: skip
    with pytest.raises(InvalidSpecError) as caught:
        parse_job(job.obj())
    (error,) = caught.value.errors
    assert error.path == "spec.distributed.deepspeed.config"
    assert "'zero_optimisation' is not a DeepSpeed config key" in error.message
    assert "did you mean 'zero_optimization'" in error.message


@pytest.mark.parametrize("key", ["wandb", "comet", "nebula"])
def test_a_deepspeed_section_that_sends_elsewhere_is_refused_naming_the_field(key: str) -> None:
    """DeepSpeed's own W&B and Comet monitors would send metrics, with the key the pods hold,
    to a server allowedTrackerUrls does not govern (Nebula: checkpoints, to Azure)."""
    job = make_job().set("distributed", {"strategy": "deepspeed", "deepspeed": {"config": {
        key: {"enabled": True}}}})  # fmt: skip
    with pytest.raises(InvalidSpecError) as caught:
        parse_job(job.obj())
    (error,) = caught.value.errors
    assert error.path == "spec.distributed.deepspeed.config"
    assert f"{key!r} sends to a service no operator setting governs" in error.message
    assert "spec.logging" in error.message or "spec.output" in error.message
    # The other monitors write only local files: still accepted.
    local = make_job().set("distributed", {"strategy": "deepspeed", "deepspeed": {"config": {
        "tensorboard": {"enabled": True}, "csv_monitor": {"enabled": True}}}})  # fmt: skip
    parse_job(local.obj())


class _ReadRecorder(dict[str, Any]):
    """A config dict that remembers every key looked up in it (get, [], in, keys())."""

    def __init__(self, values: dict[str, Any], read: set[str]) -> None:
        super().__init__(values)
        self.read = read

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def keys(self) -> Any:
        return self  # `key in config.keys()` is a lookup too


def test_every_key_the_installed_deepspeed_reads_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    """Traced, not copied: a DeepSpeed upgrade that reads a new key fails here instead of
    making the API refuse a valid config."""
    from deepspeed.runtime.config import DeepSpeedConfig

    from ftapi.v1alpha1.distributed import DEEPSPEED_CONFIG_KEYS

    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    read: set[str] = set()
    batch = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}
    DeepSpeedConfig(_ReadRecorder({**batch, "train_batch_size": 1}, read))
    assert len(read) > 40, f"the trace saw too little to mean anything: {sorted(read)}"
    assert read <= DEEPSPEED_CONFIG_KEYS, sorted(read - DEEPSPEED_CONFIG_KEYS)
    assert "zero_optimization" in read


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # A nested typo DeepSpeed would have refused only inside deepspeed.initialize.
        ({"zero_optimization": {"stgae": 2}},
         "spec.distributed.deepspeed.config.zero_optimization.stgae: Extra inputs are not"),
        ({"zero_optimization": {"offload_optimizer": {"device": "gpu"}}},
         "spec.distributed.deepspeed.config.zero_optimization.offload_optimizer.device: "
         "Input should be 'none', 'cpu' or 'nvme'"),
        ({"tensorboard": {"enabled": True, "outptu_path": "tb"}},
         "spec.distributed.deepspeed.config.tensorboard.outptu_path: Extra inputs"),
        ({"zero_optimization": {"stage": 7}}, "zero_optimization.stage: Input should be 0, 1"),
    ],
)  # fmt: skip
def test_deepspeed_refusals_name_the_key_before_training(
    raw: dict[str, Any], expected: str
) -> None:
    from fttrainer.distributed import check_deepspeed_config

    config = _ds(distributed__deepspeed={"config": raw})
    with pytest.raises(ValueError, match="DeepSpeed refuses the config") as refused:
        check_deepspeed_config(config)
    assert expected in str(refused.value)


@pytest.mark.parametrize(
    "deepspeed",
    [{"zeroStage": 0}, {"zeroStage": 1, "offloadOptimizer": "cpu"}, {"zeroStage": 2},
     {"zeroStage": 3, "offloadOptimizer": "cpu", "offloadParameters": "cpu"},
     {"zeroStage": 3, "config": {"zero_optimization": {"overlap_comm": True,
                                                       "stage3_max_live_parameters": "auto"}}}],
)  # fmt: skip
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_every_generated_deepspeed_config_passes_the_check(
    deepspeed: dict[str, Any], precision: str
) -> None:
    """The "auto" values are left for transformers: the check must not refuse our own."""
    from fttrainer.distributed import check_deepspeed_config

    check_deepspeed_config(_ds(distributed__deepspeed=deepspeed, training__precision=precision))
