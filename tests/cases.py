"""Manifests that break one rule each, shared by the unit tests (pydantic, CEL via cel-python)
and the integration tests (the real API server), so both layers refuse the same things."""

from __future__ import annotations

from typing import Any

from ftapi.v1alpha1.common import is_credential_env
from ftapi.v1alpha1.dataset import COLUMN_FORMATS
from ftapi.v1alpha1.redirects import REDIRECT_GROUPS
from fttestkit.builders import make_job

GRPO = {"rewards": [{"type": "json"}]}
# Names of the families redirects.py refuses by pattern (its exact names are all tried).
REDIRECT_SAMPLES = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_STS",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT", "KUBEFLOW_TRAINER_SERVER_URL", "https_proxy",
    "HTTPS_PROXY", "No_Proxy", "ALL_PROXY", "all_proxy", "WANDB_HTTP_PROXY", "grpc_proxy",
    "FSSPEC_HF_ENDPOINT", "FSSPEC_S3", "AWS_CSM_HOST", "AWS_CSM_ENABLED", "DATABRICKS_HOST",
    "DATABRICKS_OIDC_TOKEN_FILEPATH", "KUBEFLOW_TRAINER_SERVER_TOKEN",
    "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "AZURE_FEDERATED_TOKEN_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST", "CLOUDSDK_CONFIG",
    # What the compiled runtimes load (the issue's five, and one of each family).
    "NVTX_INJECTION64_PATH", "CUDA_INJECTION64_PATH", "NCCL_NET_PLUGIN", "NCCL_TUNER_PLUGIN",
    "NCCL_PROFILER_PLUGIN", "NCCL_CONF_FILE", "NCCL_IBVERBS_LIB", "CUDA_FORCE_PRELOAD_LIBRARIES",
    "MIC_LD_LIBRARY_PATH", "LUA_CPATH", "NVBLAS_CONFIG_FILE",
)  # fmt: skip


def redirect_env(name: str, value: str) -> dict[str, Any]:
    """An env entry setting `name`: a literal, or (a credential's name) a Secret key, so
    that only the redirect rule breaks."""
    if is_credential_env(name):
        return {"name": name, "secretKeyRef": {"name": "s", "key": "k"}}
    return {"name": name, "value": value}


# id -> (manifest, the path an error must name, a phrase the message must contain)
RULE_CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "env value and secret": (
        make_job().set("resources.env", [{"name": "A", "value": "x",
                       "secretKeyRef": {"name": "s", "key": "k"}}]).obj(),
        "spec.resources.env[0].secretKeyRef", "not both"),
    "literal credential in env": (
        make_job().set("resources.env", [{"name": "TOKENIZERS_PARALLELISM", "value": "false"},
                       {"name": "HF_TOKEN", "value": "hf_literal"}]).obj(),
        "spec.resources.env[1].value", "comes from secretKeyRef"),
    "credentials in the S3 endpoint": (
        make_job().set("output", {"uri": "s3://b/p", "s3": {
            "endpoint": "http://minioadmin:SuperSecret123@minio:9000"}}).obj(),
        "spec.output.s3.endpoint", "may not carry credentials"),
    "credentials in the MLflow tracking URI": (
        make_job().set("logging", {"reportTo": ["mlflow"], "mlflow": {
            "trackingUri": "https://alice:p4ssw0rd@mlflow.example.com"}}).obj(),
        "spec.logging.mlflow.trackingUri", "may not carry credentials"),
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
    "system prompt on plain text": (
        make_job().set("dataset.format", "plain_text")
        .set("dataset.systemPrompt", "You are X").obj(),
        "spec.dataset.systemPrompt", "plain_text rows are trained as they are"),
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
    "router loss weight without a trained router": (
        make_job().set("method", {"type": "lora", "lora": {"routerAuxLossCoef": 0.01}}).obj(),
        "spec.method.lora.routerAuxLossCoef", "weights the loss of a trained router"),
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
    **{
        f"{field} on a {kind} reward": (
            make_job().set("trainer", {"type": "grpo", "grpo": {"rewards": [reward]}})
            .set("dataset.format", "prompt_only").obj(),
            f"spec.trainer.grpo.rewards[0].{field}", f"{field} is only used by type")
        for field, kind, reward in (
            ("pattern", "contains", {"type": "contains", "text": "x", "pattern": "^<think>"}),
            ("column", "regex", {"type": "regex", "pattern": "x", "column": "answer"}),
            ("text", "exact_match", {"type": "exact_match", "column": "a", "text": "x"}),
            ("maxLength", "json", {"type": "json", "maxLength": 100}),
            ("function", "length", {"type": "length", "maxLength": 9, "function": "m:f"}),
        )
    },
    **{
        f"{field} on 8-bit quantization": (
            make_job().set("method", {"type": "lora", "quantization": {"bits": 8, field: value}})
            .obj(),
            f"spec.method.quantization.{field}", "only used by 4-bit quantization")
        for field, value in (("type", "fp4"), ("computeDtype", "float16"),
                             ("doubleQuant", False), ("quantStorage", "uint8"))
    },
    **{
        f"columns.{column} for a format that does not read it": (
            make_job().set("dataset.format", fmt).set("dataset.columns", {column: "c"}).obj(),
            f"spec.dataset.columns.{column}", f"columns.{column} is only read by format")
        for column, formats in COLUMN_FORMATS.items()
        for fmt in ["plain_text" if "plain_text" not in formats else "qa"]
    },
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
        "spec.logging.mlflow", "go together"),
    "mlflow settings without reportTo": (
        make_job().set("logging.mlflow", {"trackingUri": "http://mlflow"}).obj(),
        "spec.logging.mlflow", "go together"),
    "wandb without settings": (
        make_job().set("logging.reportTo", ["wandb"]).obj(),
        "spec.logging.wandb", "go together"),
    "torchrun variable in env": (
        make_job().set("resources.env", [{"name": "PET_NNODES", "value": "4"}]).obj(),
        "spec.resources.env", "torchrun"),
    "master address in env": (
        make_job().set("resources.env", [{"name": "MASTER_ADDR", "value": "x"}]).obj(),
        "spec.resources.env", "torchrun"),
    **{
        f"{name} in env": (
            make_job().set("resources.env", [redirect_env(name, "https://elsewhere")]).obj(),
            "spec.resources.env", group.what)
        for group in REDIRECT_GROUPS
        for name in (*group.names, *(s for s in REDIRECT_SAMPLES if group.refuses(s)))
    },
    **{
        f"env value {value!r}": (
            make_job().set("resources.env", [{"name": "A", "value": value}]).obj(),
            "spec.resources.env", "may not reference other variables")
        for value in ("$(HF_TOKEN)", "x-$(AWS_SECRET_ACCESS_KEY)-y", "$$$(A)")
    },
    "hub endpoint not a URL": (
        make_job().set("model.hubEndpoint", "hub.internal").obj(),
        "spec.model.hubEndpoint", "http(s) URL"),
    "hub endpoint with a variable reference": (
        make_job().set("model.hubEndpoint", "https://hub.internal/$(HF_TOKEN)").obj(),
        "spec.model.hubEndpoint", "http(s) URL"),
    "hub endpoint with a newline": (
        make_job().set("model.hubEndpoint", "https://hub.internal\nx").obj(),
        "spec.model.hubEndpoint", "http(s) URL"),
    "hub endpoint with a query": (
        make_job().set("model.hubEndpoint", "https://hub.internal/?token=x").obj(),
        "spec.model.hubEndpoint", "http(s) URL"),
    "wandb server with credentials": (
        make_job().set("logging", {"reportTo": ["wandb"], "wandb": {
            "project": "p", "baseUrl": "https://user:pw@wandb.internal"}}).obj(),
        "spec.logging.wandb.baseUrl", "http(s) URL"),
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
    "a vision tower trained by prefix tuning": (
        make_job().set("method.type", "prefix").set("vision.trainVisionTower", True).obj(),
        "spec.vision", "need method.type full, lora"),
    "a projector trained by spectrum": (
        make_job().set("method.type", "spectrum").set("vision.trainProjector", True).obj(),
        "spec.vision", "need method.type full, lora"),
    "early stopping without evaluation": (
        make_job().set("training.earlyStopping", {}).set("evaluation.strategy", "no").obj(),
        "spec.training.earlyStopping", "evaluation.strategy"),
    "fail if worse without evaluation": (
        make_job().set("evaluation.failIfWorseThanBase", True).set("evaluation.strategy", "no")
        .obj(),
        "spec.evaluation.failIfWorseThanBase", "compareBase true"),
    "skip on non-finite with deepspeed": (
        make_job().set("training.onNonFinite", "skip")
        .set("distributed.strategy", "deepspeed").obj(),
        "spec.training.onNonFinite", "DeepSpeed"),
    "rollback factor without rollback": (
        make_job().set("training.rollbackLearningRateFactor", 0.5).obj(),
        "spec.training.rollbackLearningRateFactor", "onNonFinite rollback"),
    "loss spike factor below 1.5": (
        make_job().set("training.lossSpikeFactor", 1.2).obj(),
        "spec.training.lossSpikeFactor", "0 (off) or at least 1.5"),
    "gradient checkpointing with prefix tuning": (
        make_job().set("method.type", "prefix").set("training.gradientCheckpointing", True).obj(),
        "spec.training.gradientCheckpointing", "prefix"),
    "push to hub without token": (
        make_job().set("output.pushToHub", {"repoId": "org/name"}).obj(),
        "spec.output.pushToHub", "needs a token"),
    "oci push reference with a digest": (
        make_job().set("output.oci", {"reference": "oci://r.example/m@sha256:" + "a" * 64}).obj(),
        "spec.output.oci.reference", "no digest"),
    "oci push reference in upper case": (
        make_job().set("output.oci", {"reference": "oci://r.example:5000/Team/Model:v1"}).obj(),
        "spec.output.oci.reference", "lowercase"),
    "oci model without a repository": (
        make_job().set("model.name", "oci://r.example").obj(),
        "spec.model.name", "oci://registry[:port]/repository"),
    "oci tokenizer with a short digest": (
        make_job().set("model.tokenizer", "oci://r.example/tok@sha256:abc").obj(),
        "spec.model.tokenizer", "oci://registry[:port]/repository"),
    "oci adapter with a space": (
        make_job().set("method", {"type": "adapter", "adapter": {"uri": "oci://r/a b:v1"}}).obj(),
        "spec.method.adapter.uri", "oci://registry[:port]/repository"),
    "revision of an oci model": (
        make_job().set("model.name", "oci://r.example/base:v1").set("model.revision", "main")
        .obj(),
        "spec.model.revision", "by its digest"),
    "registry access without an oci source": (
        make_job().set("model.registry", {"plainHttp": True}).obj(),
        "spec.model.registry", "none is one"),
    "all-linear mixed with names": (
        make_job().set("method.lora", {"targetModules": ["all-linear", "q_proj"]}).obj(),
        "spec.method.lora.targetModules", "list it alone"),
    "lora settings on an adapter": (
        make_job().set("method", {"type": "adapter", "adapter": {"uri": "s3://a/b"},
                                  "lora": {"r": 8}}).obj(),
        "spec.method.lora", "only used by type lora, qlora or dora"),
    "two spectrum selections": (
        make_job().set("method", {"type": "spectrum", "spectrum": {
            "topFraction": 0.5, "snrThreshold": 1.0}}).obj(),
        "spec.method.spectrum.snrThreshold", "choose one"),
    "prompt init text without text": (
        make_job().set("method", {"type": "prompt", "prompt": {"init": "text"}}).obj(),
        "spec.method.prompt.initText", "needs initText"),
    "dpo weights do not match losses": (
        make_job().set("trainer", {"type": "dpo", "dpo": {"lossType": ["sigmoid", "sft"],
                                   "lossWeights": [1.0]}})
        .set("dataset.format", "preference").obj(),
        "spec.trainer.dpo.lossWeights", "one weight per entry"),
    "optimizer offload without zero": (
        make_job().set("distributed", {"strategy": "deepspeed", "deepspeed": {
            "zeroStage": 0, "offloadOptimizer": "cpu"}}).obj(),
        "spec.distributed.deepspeed.offloadOptimizer", "zeroStage 1"),
    "split of a file": (
        make_job().set("dataset.train", {"uri": "data.jsonl", "split": "train"}).obj(),
        "spec.dataset.train.split", "hf://"),
    "toleration Exists with a value": (
        make_job().set("resources.tolerations", [{"key": "k", "operator": "Exists",
                                                   "value": "v"}]).obj(),
        "spec.resources.tolerations[0].value", "takes no value"),
    "toleration without key must be Exists": (
        make_job().set("resources.tolerations", [{"operator": "Equal", "value": "v"}]).obj(),
        "spec.resources.tolerations[0].operator", "needs operator Exists"),
    "grpo group does not divide the batch": (
        make_job().set("trainer", {"type": "grpo", "grpo": {**GRPO, "numGenerations": 8}})
        .set("dataset.format", "prompt_only").set("training.batchSize", 4).obj(),
        "spec.trainer.grpo.numGenerations", "multiple of trainer.grpo.numGenerations"),
    "grpo eval batch does not fit": (
        make_job().set("trainer", {"type": "grpo", "grpo": {**GRPO, "numGenerations": 4}})
        .set("dataset.format", "prompt_only").set("training.batchSize", 2)
        .set("training.gradientAccumulationSteps", 2).obj(),
        "spec.trainer.grpo.numGenerations", "evaluation batch"),
    "evaluation without validation data": (
        make_job().set("dataset.split", {"train": 1.0}).obj(),
        "spec.evaluation.strategy", "needs validation data"),
    "exact match on plain text": (
        make_job().set("dataset.format", "plain_text")
        .set("evaluation.metrics", ["loss", "exact_match"]).obj(),
        "spec.evaluation.metrics", "mcq or qa"),
    "accuracy on qa (nothing computes it)": (
        make_job().set("dataset.format", "qa")
        .set("evaluation.metrics", ["loss", "accuracy"]).obj(),
        "spec.evaluation.metrics", "accuracy needs dataset.format mcq"),
    "bleu without reference answers": (
        make_job().set("dataset.format", "plain_text")
        .set("evaluation.metrics", ["loss", "bleu"]).obj(),
        "spec.evaluation.metrics", "need reference answers"),
    "perplexity of a dpo loss": (
        make_job().set("trainer.type", "dpo").set("dataset.format", "preference")
        .set("evaluation.metrics", ["loss", "perplexity"]).obj(),
        "spec.evaluation.metrics", "perplexity needs trainer.type sft"),
    "early stopping on an unmeasured accuracy": (
        make_job().set("training.earlyStopping", {"metric": "eval_accuracy"})
        .set("dataset.format", "mcq").obj(),
        "spec.training.earlyStopping.metric", "accuracy in evaluation.metrics"),
    "packing with dpo": (
        make_job().set("trainer.type", "dpo").set("dataset.format", "preference")
        .set("dataset.packing", True).obj(),
        "spec.dataset.packing", "only used by trainer.type sft"),
    "padding-free with packing": (
        make_job().set("dataset.packing", True).set("dataset.paddingFree", True).obj(),
        "spec.dataset.paddingFree", "without dataset.packing"),
    "fp16 full fine-tune of fp16 weights": (
        make_job().set("method.type", "full").set("model.dtype", "float16")
        .set("training.precision", "fp16").obj(),
        "spec.model.dtype", "float32 master weights"),
    "bf16 compute under fp16": (
        make_job().set("method", {"type": "qlora", "quantization": {"computeDtype": "bfloat16"}})
        .set("training.precision", "fp16").obj(),
        "spec.method.quantization.computeDtype", "conflicts"),
    "two kinds of activation checkpointing": (
        make_job().set("training.gradientCheckpointing", True)
        .set("distributed", {"strategy": "fsdp", "fsdp": {"activationCheckpointing": True}}).obj(),
        "spec.training.gradientCheckpointing", "not both"),
    "best model without evaluation": (
        make_job().set("output.finalModel", "best").set("evaluation.strategy", "no").obj(),
        "spec.output.finalModel", "needs evaluation"),
    "name too long": (
        make_job("a" * 43).obj(), "", "at most 42 characters"),
    "tolerationSeconds without NoExecute": (
        make_job().set("resources.tolerations", [{"key": "spot", "operator": "Exists",
                       "effect": "NoSchedule", "tolerationSeconds": 30}]).obj(),
        "spec.resources.tolerations[0].tolerationSeconds", "only to effect NoExecute"),
    "name not a DNS label": (
        make_job("9-Lives").obj(), "", "DNS-1035"),
    # Map keys have no schema in a CRD: rules check them (the API server refused them only
    # when the operator created the pods, once).
    "nodeSelector key with two slashes": (
        make_job().set("resources.nodeSelector", {"pool/gpu/a100": "true"}).obj(),
        "spec.resources.nodeSelector", "nodeSelector keys must be"),
    "label key with a space": (
        make_job().set("resources.labels", {"cost center": "nlp"}).obj(),
        "spec.resources.labels", "label keys must be"),
    "annotation key whose name is over 63 characters": (
        make_job().set("resources.annotations", {"example.com/" + "n" * 64: "x"}).obj(),
        "spec.resources.annotations", "annotation keys must be"),
    "annotation key whose prefix is over 253 characters": (
        make_job().set("resources.annotations", {"a" * 254 + "/n": "x"}).obj(),
        "spec.resources.annotations", "annotation keys must be"),
    "label key ending in a newline": (
        make_job().set("resources.labels", {"team\n": "a"}).obj(),
        "spec.resources.labels", "label keys must be"),
    **{
        f"env replacing the Secret of {reference}": (
            make_job().set(section, block)
            .set("resources.env", [{"name": name, "secretKeyRef": {"name": "x", "key": "t"}}])
            .obj(),
            "spec.resources.env", f"{reference} sets")
        for reference, section, block, name in (
            ("model.hfTokenSecretRef", "model.hfTokenSecretRef", {"name": "hf", "key": "t"},
             "HF_TOKEN"),
            ("output.s3.credentialsSecretRef", "output",
             {"uri": "s3://b/p", "s3": {"credentialsSecretRef": {"name": "s"}}},
             "AWS_SESSION_TOKEN"),
            ("logging.wandb.apiKeySecretRef", "logging", {"reportTo": ["wandb"], "wandb": {
                "project": "p", "apiKeySecretRef": {"name": "w", "key": "k"}}}, "WANDB_API_KEY"),
            ("logging.mlflow.tokenSecretRef", "logging", {"reportTo": ["mlflow"], "mlflow": {
                "trackingUri": "http://mlflow:5000", "tokenSecretRef": {"name": "m", "key": "k"}}},
             "MLFLOW_TRACKING_TOKEN"),
        )
    },
    "GPU resource in the kubernetes.io domain": (
        make_job().set("resources.gpuResourceName", "kubernetes.io/gpu").obj(),
        "spec.resources.gpuResourceName", "not in the kubernetes.io domain"),
    "GPU resource named as a quota": (
        make_job().set("resources.gpuResourceName", "requests.nvidia.com/gpu").obj(),
        "spec.resources.gpuResourceName", "not starting with requests."),
    "GPU resource name over 63 characters": (
        make_job().set("resources.gpuResourceName", "nvidia.com/" + "g" * 64).obj(),
        "spec.resources.gpuResourceName", "a name of at most 63"),
    "toleration key in capitals": (
        make_job().set("resources.tolerations", [{"key": "Example.COM/spot",
                       "operator": "Exists"}]).obj(),
        "spec.resources.tolerations[0].key", "a taint key is"),
}  # fmt: skip

# Field-level checks (types, enums, bounds, unknown fields) come from the schema itself.
FIELD_CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "images bounded below a patch": (
        make_job().set("vision.maxImagePixels", 100).obj(),
        "spec.vision.maxImagePixels", "must be >= 784"),
    "unknown field": (make_job().set("training.lr", 1).obj(), "spec.training.lr", "unknown field"),
    "unknown method": (
        make_job().set("method.type", "ia3").obj(), "spec.method.type", "must be one of"),
    "rank zero": (
        make_job().set("method.lora", {"r": 0}).obj(), "spec.method.lora.r", ">= 1"),
    "missing model": (make_job().without("model").obj(), "spec.model", "required"),
    "bad quantity": (
        make_job().set("resources.memory", "lots").obj(), "spec.resources.memory", "quantity"),
    "negative CPU": (
        make_job().set("resources.cpu", "-4").obj(), "spec.resources.cpu", "more than 0"),
    "negative CPU as a number": (
        make_job().set("resources.cpu", -4).obj(), "spec.resources.cpu", "more than 0"),
    "zero memory": (
        make_job().set("resources.memory", "0Gi").obj(), "spec.resources.memory", "more than 0"),
    "zero shared memory": (
        make_job().set("resources.sharedMemory", 0).obj(), "spec.resources.sharedMemory",
        "more than 0"),
    "an exponent the API server chokes on": (
        make_job().set("resources.cpu", "1e99999999999").obj(), "spec.resources.cpu",
        "exponents of at most two digits"),
    "a quantity of a thousand digits": (
        make_job().set("resources.memory", "9" * 1000).obj(), "spec.resources.memory",
        "longer than 64"),
    "negative memory in exponent form": (
        make_job().set("resources.memory", "-1e9").obj(), "spec.resources.memory",
        "more than 0"),
    "GPU resource that is a core resource": (
        make_job().set("resources.gpuResourceName", "memory").obj(),
        "spec.resources.gpuResourceName", "must match"),
    "GPU resource domain with an empty label": (
        make_job().set("resources.gpuResourceName", "nvidia..com/gpu").obj(),
        "spec.resources.gpuResourceName", "must match"),
    "image with a trailing space": (
        make_job().set("resources.image", "registry.example/trainer:1 ").obj(),
        "spec.resources.image", "must match"),
    "negative gpus": (
        make_job().set("resources.gpusPerNode", -1).obj(), "spec.resources.gpusPerNode", ">= 0"),
    "ratio above one": (
        make_job().set("dataset.split", {"train": 1.5}).obj(), "spec.dataset.split.train", "<= 1"),
    "GPU resource without a domain": (
        make_job().set("resources.gpuResourceName", "gpu").obj(),
        "spec.resources.gpuResourceName", "must match"),
    "queue name longer than a label value": (
        make_job().set("scheduling.queueName", "q" * 64).obj(), "spec.scheduling.queueName",
        "at most 63"),
    "registered model name with a slash": (
        make_job().set("logging", {"reportTo": ["mlflow"], "mlflow": {
            "trackingUri": "http://mlflow:5000", "registeredModel": "team/chat"}}).obj(),
        "spec.logging.mlflow.registeredModel", "must match"),
    "label value over 63 characters": (
        make_job().set("resources.labels", {"team": "t" * 64}).obj(),
        "spec.resources.labels.team", "at most 63"),
    "nodeSelector value with a slash": (
        make_job().set("resources.nodeSelector", {"pool": "gpu/a100"}).obj(),
        "spec.resources.nodeSelector.pool", "must match"),
    "toleration value over 63 characters": (
        make_job().set("resources.tolerations", [{"key": "spot", "value": "v" * 64}]).obj(),
        "spec.resources.tolerations[0].value", "at most 63"),
    "annotation value over 3584 characters": (
        make_job().set("resources.annotations", {"note": "x" * 3585}).obj(),
        "spec.resources.annotations.note", "at most 3584"),
    "bad secret name": (
        make_job().set("model.hfTokenSecretRef", {"name": "Bad_Name", "key": "t"}).obj(),
        "spec.model.hfTokenSecretRef.name", "must match"),
    # Beyond ten years a duration would overflow the operator's date arithmetic.
    "ttl beyond ten years": (
        make_job().set("runPolicy.ttlSecondsAfterFinished", 10**12).obj(),
        "spec.runPolicy.ttlSecondsAfterFinished", "<= 315360000"),
    "deadline beyond ten years": (
        make_job().set("runPolicy.activeDeadlineSeconds", 10**12).obj(),
        "spec.runPolicy.activeDeadlineSeconds", "<= 315360000"),
    "seed beyond numpy's range": (
        make_job().set("training.seed", 2**32).obj(), "spec.training.seed", "<= 4294967295"),
    # What pydantic's lax mode would take and the API server does not.
    "a string for an integer": (
        make_job().set("training.batchSize", "8").obj(), "spec.training.batchSize",
        "must be an integer"),
    "a boolean for an integer": (
        make_job().set("training.batchSize", True).obj(), "spec.training.batchSize",
        "must be an integer"),
    "a number for a string": (
        make_job().set("model.revision", 2).obj(), "spec.model.revision", "must be a string"),
    "a snake_case key": (
        make_job().set("training.batch_size", 8).obj(), "spec.training.batch_size",
        "unknown field"),
    "a metric given twice": (
        make_job().set("evaluation", {"strategy": "no", "metrics": ["loss", "loss"]}).obj(),
        "spec.evaluation.metrics", "given twice"),
    "a tracker given twice": (
        make_job().set("logging", {"reportTo": ["tensorboard", "tensorboard"]}).obj(),
        "spec.logging.reportTo", "given twice"),
    "an env name given twice": (
        make_job().set("resources.env", [{"name": "A", "value": "1"},
                       {"name": "A", "value": "2"}]).obj(),
        "spec.resources.env", "given twice"),
}  # fmt: skip
