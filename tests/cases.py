"""Manifests that break one rule each, shared by the unit tests (pydantic, CEL via cel-python)
and the integration tests (the real API server), so both layers refuse the same things."""

from __future__ import annotations

from typing import Any

from tests.builders import make_job

GRPO = {"rewards": [{"type": "json"}]}

# id -> (manifest, the path an error must name, a phrase the message must contain)
RULE_CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "env value and secret": (
        make_job().set("resources.env", [{"name": "A", "value": "x",
                       "secretKeyRef": {"name": "s", "key": "k"}}]).obj(),
        "spec.resources.env[0].secretKeyRef", "not both"),
    "split does not sum to 1": (
        make_job().set("dataset.split", {"train": 0.8, "validation": 0.1}).obj(),
        "spec.dataset.split", "sum to 1"),
    "split with no train": (
        make_job().set("dataset.split", {"train": 0.0, "validation": 1.0}).obj(),
        "spec.dataset.split.train", "greater than 0"),
    "validation file and validation ratio": (
        make_job().set("dataset.validation", {"uri": "v.jsonl"})
        .set("dataset.split", {"train": 0.9, "validation": 0.1}).obj(),
        "spec.dataset.split.validation", "separate validation"),
    "test file and test ratio": (
        make_job().set("dataset.test", {"uri": "t.jsonl"})
        .set("dataset.split", {"train": 0.9, "test": 0.1}).obj(),
        "spec.dataset.split.test", "separate test"),
    "responses only on plain text": (
        make_job().set("dataset.format", "plain_text")
        .set("dataset.trainOnResponsesOnly", True).obj(),
        "spec.dataset.trainOnResponsesOnly", "format with responses"),
    "response markers while responses-only is off": (
        make_job().set("dataset.trainOnResponsesOnly", False)
        .set("dataset.responseMarkers", {"instruction": "U:", "response": "A:"}).obj(),
        "spec.dataset.responseMarkers", "only used with trainOnResponsesOnly"),
    "qlora with 8 bits": (
        make_job().set("method", {"type": "qlora", "quantization": {"bits": 8}}).obj(),
        "spec.method.quantization.bits", "4-bit"),
    "quantized full fine-tune": (
        make_job().set("method", {"type": "full", "quantization": {"bits": 4}}).obj(),
        "spec.method.quantization", "frozen base"),
    "lora settings on full": (
        make_job().set("method", {"type": "full", "lora": {"r": 8}}).obj(),
        "spec.method.lora", "only used by type lora"),
    "loftq with qlora": (
        make_job().set("method", {"type": "qlora", "lora": {"loftq": {"bits": 4}}}).obj(),
        "spec.method.lora.loftq", "replaces quantizing"),
    "adapter type without uri": (
        make_job().set("method", {"type": "adapter"}).obj(),
        "spec.method.adapter", "needs adapter.uri"),
    "adapter uri on lora": (
        make_job().set("method", {"type": "lora", "adapter": {"uri": "s3://a/b"}}).obj(),
        "spec.method.adapter", "only used by type adapter"),
    "spectrum settings on lora": (
        make_job().set("method", {"type": "lora", "spectrum": {"topFraction": 0.5}}).obj(),
        "spec.method.spectrum", "only used by type spectrum"),
    "prefix settings on lora": (
        make_job().set("method", {"type": "lora", "prefix": {}}).obj(),
        "spec.method.prefix", "only used by type prefix"),
    "prompt settings on lora": (
        make_job().set("method", {"type": "lora", "prompt": {}}).obj(),
        "spec.method.prompt", "only used by type prompt"),
    "regex reward without pattern": (
        make_job().set("trainer", {"type": "grpo", "grpo": {"rewards": [{"type": "regex"}]}})
        .set("dataset.format", "prompt_only").obj(),
        "spec.trainer.grpo.rewards[0].pattern", "needs pattern"),
    "exact match reward without column": (
        make_job().set("trainer", {"type": "grpo", "grpo": {"rewards": [{"type": "exact_match"}]}})
        .set("dataset.format", "prompt_only").obj(),
        "spec.trainer.grpo.rewards[0].column", "needs column"),
    "contains reward with text and column": (
        make_job().set("trainer", {"type": "grpo", "grpo": {"rewards": [
            {"type": "contains", "text": "x", "column": "answer"}]}})
        .set("dataset.format", "prompt_only").obj(),
        "spec.trainer.grpo.rewards[0].text", "exactly one of text or column"),
    "length reward without limit": (
        make_job().set("trainer", {"type": "grpo", "grpo": {"rewards": [{"type": "length"}]}})
        .set("dataset.format", "prompt_only").obj(),
        "spec.trainer.grpo.rewards[0].maxLength", "needs maxLength"),
    "python reward without function": (
        make_job().set("trainer", {"type": "grpo", "grpo": {"rewards": [{"type": "python"}]}})
        .set("dataset.format", "prompt_only").obj(),
        "spec.trainer.grpo.rewards[0].function", "needs function"),
    "dpo settings on sft": (
        make_job().set("trainer", {"type": "sft", "dpo": {"beta": 0.2}}).obj(),
        "spec.trainer.dpo", "only used by type dpo"),
    "grpo without rewards block": (
        make_job().set("trainer", {"type": "grpo"}).set("dataset.format", "prompt_only").obj(),
        "spec.trainer.grpo", "needs grpo.rewards"),
    "grpo block on sft": (
        make_job().set("trainer", {"type": "sft", "grpo": GRPO}).obj(),
        "spec.trainer.grpo", "only used by type grpo"),
    "parameter offload below zero 3": (
        make_job().set("distributed", {"strategy": "deepspeed", "deepspeed": {
            "zeroStage": 2, "offloadParameters": "cpu"}}).obj(),
        "spec.distributed.deepspeed.offloadParameters", "zeroStage 3"),
    "fsdp settings on ddp": (
        make_job().set("distributed", {"strategy": "ddp", "fsdp": {}}).obj(),
        "spec.distributed.fsdp", "only used by strategy fsdp"),
    "deepspeed settings on fsdp": (
        make_job().set("distributed", {"strategy": "fsdp", "deepspeed": {}}).obj(),
        "spec.distributed.deepspeed", "only used by strategy deepspeed"),
    "steps strategy without steps": (
        make_job().set("evaluation.strategy", "steps").obj(),
        "spec.evaluation.steps", "needs steps"),
    "steps with epoch strategy": (
        make_job().set("evaluation.steps", 50).obj(),
        "spec.evaluation.strategy", "only used with strategy steps"),
    "s3 settings on a local uri": (
        make_job().set("output", {"uri": "/tmp/out", "s3": {"region": "x"}}).obj(),
        "spec.output.s3", "s3:// uri"),
    "mlflow without settings": (
        make_job().set("logging.reportTo", ["mlflow"]).obj(),
        "spec.logging.mlflow", "mlflow.trackingUri"),
    "wandb without settings": (
        make_job().set("logging.reportTo", ["wandb"]).obj(),
        "spec.logging.wandb", "wandb.project"),
    "torchrun variable in env": (
        make_job().set("resources.env", [{"name": "PET_NNODES", "value": "4"}]).obj(),
        "spec.resources.env", "torchrun"),
    "master address in env": (
        make_job().set("resources.env", [{"name": "MASTER_ADDR", "value": "x"}]).obj(),
        "spec.resources.env", "torchrun"),
    "warmup ratio and steps": (
        make_job().set("training.warmupRatio", 0.1).set("training.warmupSteps", 10).obj(),
        "spec.training.warmupSteps", "not both"),
    "dpo on instruction data": (
        make_job().set("trainer.type", "dpo").obj(),
        "spec.dataset.format", "dpo needs dataset.format preference"),
    "grpo on instruction data": (
        make_job().set("trainer", {"type": "grpo", "grpo": GRPO}).obj(),
        "spec.dataset.format", "grpo needs dataset.format prompt_only"),
    "sft on preference data": (
        make_job().set("dataset.format", "preference").obj(),
        "spec.dataset.format", "sft cannot use"),
    "merge a full fine-tune": (
        make_job().set("method.type", "full").set("output.mergeAdapter", True).obj(),
        "spec.output.mergeAdapter", "LoRA method.type"),
    "early stopping without evaluation": (
        make_job().set("training.earlyStopping", {}).set("evaluation.strategy", "no").obj(),
        "spec.training.earlyStopping", "evaluation.strategy"),
    "gradient checkpointing with prefix tuning": (
        make_job().set("method.type", "prefix").set("training.gradientCheckpointing", True).obj(),
        "spec.training.gradientCheckpointing", "prefix"),
    "push to hub without token": (
        make_job().set("output.pushToHub", {"repoId": "org/name"}).obj(),
        "spec.output.pushToHub", "needs a token"),
    "name too long": (
        make_job("a" * 43).obj(), "", "at most 42 characters"),
    "name not a DNS label": (
        make_job("9-Lives").obj(), "", "DNS-1035"),
}  # fmt: skip

# Field-level checks (types, enums, bounds, unknown fields) come from the schema itself.
FIELD_CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "unknown field": (make_job().set("training.lr", 1).obj(), "spec.training.lr", "unknown field"),
    "unknown method": (
        make_job().set("method.type", "ia3").obj(), "spec.method.type", "must be one of"),
    "rank zero": (
        make_job().set("method.lora", {"r": 0}).obj(), "spec.method.lora.r", ">= 1"),
    "missing model": (make_job().without("model").obj(), "spec.model", "required"),
    "bad quantity": (
        make_job().set("resources.memory", "lots").obj(), "spec.resources.memory", "quantity"),
    "negative gpus": (
        make_job().set("resources.gpusPerNode", -1).obj(), "spec.resources.gpusPerNode", ">= 0"),
    "ratio above one": (
        make_job().set("dataset.split", {"train": 1.5}).obj(), "spec.dataset.split.train", "<= 1"),
    "bad secret name": (
        make_job().set("model.hfTokenSecretRef", {"name": "Bad_Name", "key": "t"}).obj(),
        "spec.model.hfTokenSecretRef.name", "must match"),
}  # fmt: skip
