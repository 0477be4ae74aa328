"""spec.distributed → what transformers' TrainingArguments takes for FSDP and DeepSpeed.

Pure functions, no torch at import: the mapping is unit-tested without a process group.
Checked against transformers 5.23
(`TrainingArguments._process_fsdp_args`, `integrations/deepspeed.py`), accelerate 1.15
(`FullyShardedDataParallelPlugin`, `fsdp2_prepare_model`) and deepspeed 0.19.8
(`runtime/zero/config.py`).

Who does what:

- **FSDP** is FSDP2 (`fully_shard`) through accelerate's plugin. Full-weight training
  recomputes activations with FSDP's own (`activation_checkpointing`; the TrainingArguments
  flavour re-gathers every layer's parameters a second time in backward; transformers refuses
  both at once). Adapter methods (LoRA family, prefix, prompt) recompute with the model's own
  `gradient_checkpointing_enable` instead: FSDP's wraps each decoder layer in
  `checkpoint_wrapper`, whose `_checkpoint_wrapped_module.` in every parameter name PEFT
  0.21 does not strip when it saves, so the adapter came out empty (EmptyWeightsError on an
  H100, 2026-11-22). The final save gathers a FULL_STATE_DICT on rank 0, so `final/` is an
  ordinary adapter or model.
- **DeepSpeed** gets a complete JSON config: ZeRO stage and offload from the spec,
  precision sections that agree with the resolved precision (transformers rejects a config
  whose bf16/fp16 disagree with its own flags), and "auto" wherever transformers knows the
  value (batch sizes, clipping, bucket sizes from the hidden size). The user's raw
  `deepspeed.config` is merged over it and wins. Activation recompute stays the model's own
  (`gradient_checkpointing_enable`): DeepSpeed's `activation_checkpointing` section only
  acts on models written against `deepspeed.checkpointing`, which transformers models are not.

The ZeRO-3 + LoRA pitfall: parameters live as empty placeholders on every rank, so a save
that does not gather them first writes an adapter of zero-element tensors that loads
without complaint and does nothing. `stage3_gather_16bit_weights_on_model_save` makes
`Trainer.save_model` gather (transformers 5.23 gathers a PEFT model's trainable weights
even without it, but full weights then come out as DeepSpeed shards only), and
`check_saved_weights` fails the run whenever the saved weights are missing or empty,
whatever path wrote them.
"""

from __future__ import annotations

import copy
import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftapi.v1alpha1 import DeepSpeedSpec, DistributedSpec, FsdpSpec

# The three spellings DeepSpeed 0.19 accepts for "gather ZeRO-3 weights when saving"
# (field name, its alias, the deprecated fp16 name): a user who set any of them has decided.
ZERO3_GATHER_KEYS = (
    "stage3_gather_16bit_weights_on_model_save",
    "gather_16bit_weights_on_model_save",
    "stage3_gather_fp16_weights_on_model_save",
)
# training.optimizer values DeepSpeed's CPU AdamW reproduces when it takes over the optimizer.
_ADAMW_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")
# Files `save_pretrained` writes, adapter first; sharded full models add an index.
WEIGHT_FILES = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class EmptyWeightsError(RuntimeError):
    """The final save wrote no weights, or tensors with no elements: the run looked fine
    but produced nothing usable (typically ZeRO-3 partitions saved without gathering)."""


def strategy_kwargs(
    distributed: DistributedSpec,
    *,
    precision: str,
    recompute: bool,
    optimizer: str,
    cuda: bool,
    layer_classes: Sequence[str] = (),
    adapter: bool = False,
) -> dict[str, Any]:
    """TrainingArguments entries for distributed.strategy (DDP/auto need none of these).

    `recompute` is the resolved training.gradientCheckpointing: under FSDP it moves
    into FSDP's own activation recompute and the TrainingArguments flag goes off, except
    for `adapter` methods, where both kinds go to the model's own (module docstring).
    `layer_classes` are the model's decoder layer classes (its `_no_split_modules`)."""
    strategy = distributed.strategy
    if strategy == "fsdp":
        if not cuda:
            # accelerate 1.15 attaches the FSDP plugin only to GPU-like process groups
            # (AcceleratorState: MULTI_GPU, MULTI_XPU, ...); on CPU (MULTI_CPU) the
            # Trainer would silently train unsharded DDP instead.
            raise ValueError(
                "distributed.strategy fsdp needs GPUs: accelerate does not shard CPU "
                "process groups (use ddp or deepspeed on CPU)"
            )
        fsdp = distributed.fsdp or FsdpSpec()
        recompute = recompute or fsdp.activation_checkpointing
        return {
            "fsdp": True,
            "fsdp_config": build_fsdp_config(
                fsdp, recompute=recompute and not adapter, layer_classes=layer_classes
            ),
            "activation_checkpointing": recompute and adapter,
        }
    if strategy == "deepspeed":
        deepspeed = distributed.deepspeed or DeepSpeedSpec()
        # On CPU `use_cpu` stays on: it is what gives accelerate a gloo process group of
        # the right size (without it, accelerate finds no GPU backend, counts one process
        # and DeepSpeed's batch-size check fails); DeepSpeed then runs on that group.
        return {
            "deepspeed": build_deepspeed_config(deepspeed, precision=precision, optimizer=optimizer)
        }
    return {}


def build_fsdp_config(
    fsdp: FsdpSpec, *, recompute: bool, layer_classes: Sequence[str] = ()
) -> dict[str, Any]:
    """`fsdp_config` for TrainingArguments: FSDP2, one shard group per decoder layer.
    `recompute`: FSDP's own activation recompute (strategy_kwargs decides which
    kind applies)."""
    config: dict[str, Any] = {
        "version": 2,
        "reshard_after_forward": fsdp.reshard_after_forward,
        "cpu_offload": fsdp.cpu_offload,
        "activation_checkpointing": recompute,
        # One file on rank 0 that from_pretrained/PeftModel read; SHARDED_STATE_DICT would
        # leave save_model writing nothing at all.
        "state_dict_type": "FULL_STATE_DICT",
        # Every rank loads the checkpoint: the model is loaded before the TrainingArguments
        # exist, so rank-0-only loading (which transformers decides at load time) cannot apply.
        "cpu_ram_efficient_loading": False,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    }
    if layer_classes:
        config["transformer_layer_cls_to_wrap"] = list(layer_classes)
    return config


def build_deepspeed_config(
    deepspeed: DeepSpeedSpec, *, precision: str, optimizer: str = "adamw_torch"
) -> dict[str, Any]:
    """The full DeepSpeed config: generated from the spec, then the raw config over it."""
    stage = deepspeed.zero_stage
    # Bucket sizes "auto": transformers derives them from the model's hidden size.
    zero: dict[str, Any] = {"stage": stage, "reduce_bucket_size": "auto"}
    if deepspeed.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if deepspeed.offload_parameters == "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
        )
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},  # DeepSpeed's default: dynamic loss scaling
        "steps_per_print": 2**31 - 1,  # the Trainer logs progress; DeepSpeed's lines repeat it
        "wall_clock_breakdown": False,
    }
    if deepspeed.offload_optimizer == "cpu":
        # DeepSpeed refuses ZeRO-Offload with the Trainer's torch optimizer (it would step
        # on the CPU at torch speed); its own CPU AdamW takes over, the HF scheduler stays.
        if optimizer not in _ADAMW_OPTIMIZERS:
            raise ValueError(
                f"distributed.deepspeed.offloadOptimizer cpu runs DeepSpeed's CPU AdamW, so "
                f"training.optimizer {optimizer} cannot apply: use adamw_torch or no offload"
            )
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    merged = deep_merge(config, deepspeed.config or {})
    merged_zero = merged.get("zero_optimization")
    if (
        isinstance(merged_zero, dict)
        and merged_zero.get("stage") == 3
        and not any(key in merged_zero for key in ZERO3_GATHER_KEYS)
    ):
        # Decided after the merge: a raw config may raise the stage to 3 itself, and a
        # user who spelled the flag (any spelling) keeps their value.
        merged_zero["stage3_gather_16bit_weights_on_model_save"] = True
    return merged


def check_deepspeed_config(config: Mapping[str, Any]) -> None:
    """Run DeepSpeed's own parser over the merged config now, not when training starts.

    DeepSpeed reads its config only inside `deepspeed.initialize`, after the data and the
    model have loaded, so a misspelt nested key (`zero_optimization.stgae`) or a bad value
    (`offload_optimizer.device: gpu`) cost minutes and then a restart that failed the same
    way. Its section models forbid unknown keys (and skip the "auto" values transformers
    fills in later), so this finds every key it would refuse. Raises ValueError naming the
    key under spec.distributed.deepspeed.config."""
    from deepspeed.runtime.config import (
        DeepSpeedConfig,
        DeepSpeedConfigError,
        _reject_removed_config_keys,
    )
    from pydantic import ValidationError

    where = "spec.distributed.deepspeed.config"
    try:
        _reject_removed_config_keys(config)
        # The section parsing of DeepSpeedConfig.__init__ without its batch-size arithmetic
        # (which needs the "auto" values) and without a process group.
        DeepSpeedConfig.__new__(DeepSpeedConfig)._initialize_params(copy.deepcopy(config))
    except ValidationError as exc:
        problems = [f"{_locate(where, config, e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ValueError("DeepSpeed refuses the config: " + "; ".join(problems)) from None
    except (DeepSpeedConfigError, ValueError, TypeError, KeyError, AssertionError) as exc:
        raise ValueError(f"{where}: DeepSpeed refuses the config: {exc}") from None


def _locate(where: str, config: Mapping[str, Any], loc: Sequence[int | str]) -> str:
    """The full key path of a pydantic error location, which starts at the section model
    (`stgae` for zero_optimization.stgae): the one path in the config that ends with it,
    else the location as given."""
    tail = tuple(str(part) for part in loc)
    if not tail:
        return where
    matches = [path for path in _key_paths(config) if path[-len(tail) :] == tail]
    return ".".join((where, *(matches[0] if len(matches) == 1 else tail)))


def _key_paths(
    config: Mapping[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    for key, value in config.items():
        path = (*prefix, str(key))
        yield path
        if isinstance(value, Mapping):
            yield from _key_paths(value, path)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `base`: mappings merge key by key, anything else is replaced whole
    (lists included: a DeepSpeed list is one value, not a set of items to union)."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def confirm_strategy(trainer: Any, distributed: DistributedSpec) -> str:
    """What the built Trainer will really run, for the log; an error when it is not the
    requested strategy. accelerate drops a plugin it cannot use without a word (FSDP on a
    CPU process group trains plain DDP), and a job that asked for sharding to fit in memory
    should stop here, not run out of memory an hour later."""
    accelerator = trainer.accelerator
    processes = f"{accelerator.num_processes} process(es)"
    if distributed.strategy == "deepspeed" and not trainer.is_deepspeed_enabled:
        raise RuntimeError(f"distributed.strategy deepspeed was not enabled ({processes})")
    if distributed.strategy == "fsdp" and not trainer.is_fsdp_enabled:
        raise RuntimeError(f"distributed.strategy fsdp was not enabled ({processes})")
    if trainer.is_deepspeed_enabled:
        return f"deepspeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}, {processes}"
    if trainer.is_fsdp_enabled:
        return f"FSDP{accelerator.state.fsdp_plugin.fsdp_version}, {processes}"
    return f"{accelerator.distributed_type.value}, {processes}"


@contextmanager
def unsharded_loading(training_args: Any) -> Iterator[None]:
    """Load models as plain weights inside this block, even under ZeRO-3.

    While the TrainingArguments of a ZeRO-3 run live, transformers builds every
    `from_pretrained` model under `deepspeed.zero.Init`, which partitions it with collective
    broadcasts. Rank 0 reloading the base model alone (to merge the adapter) would wait on
    ranks that have finished, and merge into empty placeholders if it got that far."""
    hf_config = getattr(training_args, "hf_deepspeed_config", None)
    if hf_config is None:
        yield
        return
    from transformers.integrations.deepspeed import (
        set_hf_deepspeed_config,
        unset_hf_deepspeed_config,
    )

    unset_hf_deepspeed_config()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        set_hf_deepspeed_config(hf_config)  # type: ignore[no-untyped-call]


def check_saved_weights(directory: Path) -> dict[str, tuple[int, ...]]:
    """Fail the run when `directory` holds no weights or any zero-element tensor.

    Returns tensor name → shape, read from the safetensors headers (no tensor is loaded).
    A zero-element parameter exists in no real model: it is a ZeRO-3 placeholder saved
    without being gathered, and PEFT would load it silently as a no-op adapter."""
    shapes = _saved_shapes(directory)
    if not shapes:
        raise EmptyWeightsError(
            f"no weights were saved in {directory} (found: "
            f"{sorted(p.name for p in directory.iterdir()) if directory.is_dir() else 'nothing'}). "
            "Under DeepSpeed ZeRO-3 with zero_optimization.stage3_gather_16bit_weights_on_"
            "model_save false the Trainer writes only DeepSpeed's sharded global_step*/ "
            "files: leave that flag true."
        )
    empty = sorted(name for name, shape in shapes.items() if _elements(shape) == 0)
    if empty:
        listed = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise EmptyWeightsError(
            f"{len(empty)} of {len(shapes)} saved tensors in {directory} are empty ({listed}): "
            "sharded parameters were written without being gathered (DeepSpeed ZeRO-3 needs "
            "stage3_gather_16bit_weights_on_model_save true)"
        )
    return shapes


def _saved_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of the first weight file set save_pretrained leaves in `directory`."""
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            shapes: dict[str, tuple[int, ...]] = {}
            for shard in shards:
                shapes.update(_file_shapes(directory / shard))
            return shapes
        return _file_shapes(path)
    return {}


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix == ".safetensors":
        return read_safetensors_shapes(path)
    import torch  # a pickled .bin: only when safetensors was turned off

    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key: tuple(value.shape) for key, value in state.items()}


def read_safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """name → shape from a safetensors header (8-byte little-endian length, then JSON):
    enough to see empty tensors without reading gigabytes of weights."""
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def _elements(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
