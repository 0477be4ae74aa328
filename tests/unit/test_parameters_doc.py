"""docs/parameters.md maps every parameter of the styles our users come from, and every API
path it names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ftapi.crd import build_openapi_schema

# The parameters the API must cover (issue: "FineTuneJob API, generated CRD ...").
CLI = """--model_name --tokenizer --hf_token --data_path --dataset_type --val_path --test_path
--train_ratio --val_ratio --test_ratio --split_seed --technique --epochs --batch_size
--grad_acc_steps --learning_rate --device --eval_steps --save_path --lora_r --lora_alpha
--lora_dropout --lora_target_modules --prompts_file"""
TOML = """base_model_id max_sequence_length dtype load_in_4bit load_in_8bit full_finetuning rank
lora_alpha lora_dropout target_modules bias use_rslora loftq_config training_dataset_id
validation_dataset_id dataset_num_proc question_column ground_truth_column
system_prompt_column system_prompt_override_text epochs learning_rate device_train_batch_size
device_validation_batch_size grad_accumulation warmup_steps lr_scheduler_type optimizer
weight_decay seed use_gradient_checkpointing use_flash_attention packing
train_on_responses_only question_part answer_part log_steps log_first_step report_to
mlflow_tracking_uri mlflow_experiment_name mlflow_run_name mlflow_run_name_prefix
mlflow_run_name_suffix save_steps save_total_limit push_to_hub"""
YAML = """model.base_model model.tokenizer model.load_in_8bit model.load_in_4bit
model.trust_remote_code model.use_flash_attention model.use_liger_kernels fine_tuning.method
fine_tuning.lora.r fine_tuning.lora.alpha fine_tuning.lora.dropout
fine_tuning.lora.target_modules fine_tuning.lora.bias fine_tuning.spectrum.snr_threshold
fine_tuning.spectrum.layers_to_finetune fine_tuning.quantization.bits
fine_tuning.quantization.compute_dtype fine_tuning.quantization.quant_type
fine_tuning.quantization.double_quant training.epochs training.micro_batch_size
training.gradient_accumulation_steps training.learning_rate training.lr_scheduler_type
training.warmup_ratio training.max_grad_norm training.optimizer training.weight_decay
training.max_seq_length training.gradient_checkpointing training.mixed_precision
dataset.format dataset.train_path dataset.eval_path dataset.add_eos dataset.add_bos
dataset.use_chat_template distributed.deepspeed distributed.zero_stage output.dir
output.logging_steps output.eval_steps output.save_steps output.save_total_limit
output.push_to_hub output.hub_model_id evaluation.do_eval evaluation.eval_batch_size
evaluation.eval_strategy evaluation.eval_steps evaluation.benchmarks"""
HYDRA = """dataset_format=standard dataset_format=conversational dataset_format=preference
trainer=sft trainer=dpo trainer=grpo strategy=fsdp strategy=ddp optim max_completion_length
max_seq_length save_steps report_to"""
PEFT = "prefix_tuning prompt_tuning prefix_projection prompt_tuning_init prompt_tuning_init_text"

DOC = Path(__file__).resolve().parents[2] / "docs" / "parameters.md"


def _listed() -> set[str]:
    """First-column entries of the doc's tables: `name` (optionally followed by a note)."""
    return set(re.findall(r"^\| `([^`]+)`", DOC.read_text(), flags=re.MULTILINE))


@pytest.mark.parametrize(
    ("style", "names"),
    [("cli", CLI), ("toml", TOML), ("yaml", YAML), ("hydra", HYDRA), ("peft", PEFT)],
)
def test_every_parameter_is_mapped(style: str, names: str) -> None:
    missing = sorted(set(names.split()) - _listed())
    assert not missing, f"{style} parameters missing from docs/parameters.md: {missing}"


def test_every_named_api_path_exists() -> None:
    schema = build_openapi_schema()
    paths = set(re.findall(r"`(spec(?:\.[A-Za-z0-9]+)+)", DOC.read_text()))
    assert len(paths) > 80
    for path in sorted(paths):
        node = schema
        for part in path.split("."):
            node = node.get("items", node)
            assert part in node.get("properties", {}), f"{path}: no field {part!r}"
            node = node["properties"][part]
