"""The fine-tuning recipe: one FineTuneJob spec in, a trained adapter (or model) out.

Reads top to bottom, in dependency order:

    recipe = Recipe(job, output_dir)
    recipe.setup()              # data → tokenizer → token checks → model → trainer
    result = recipe.train()     # + evaluation, task scores, test split, benchmarks
    recipe.save(result)         # weights, tokenizer, metrics, comparison, loss curve, result.json
    recipe.publish()            # copy the results to output.uri (rank 0)

Every method.type (full, lora, qlora, dora, adapter, spectrum, prefix, prompt) with SFT,
DPO or GRPO.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftapi.v1alpha1 import Columns, FineTuneJob, FineTuneJobSpec, SpectrumSpec
from ftapi.v1alpha1.method import FULL_WEIGHT_METHODS

from .arguments import (
    peft_config_kwargs,
    resolve_precision,
    responses_only,
    trainer_config_kwargs,
)
from .artefacts import answer_prompts, plot_loss_curve, read_prompts
from .callbacks import EarlyStopping
from .data.formats import FormatContext, convert_row
from .data.prepare import PreparedData, prepare_data
from .data.sources import read_source
from .data.tokens import TokenReport, check_tokens
from .rewards import build_rewards
from .scoring import mcq_accuracy, qa_exact_match
from .spectrum import apply_spectrum
from .storage import open_store, upload_tree
from .templates import CHAT_TEMPLATE

log = logging.getLogger("fttrainer")
# Spec dtype and precision names -> torch dtype attribute names.
TORCH_DTYPES = {
    "bfloat16": "bfloat16", "float16": "float16", "float32": "float32", "uint8": "uint8",
    "bf16": "bfloat16", "fp16": "float16", "fp32": "float32",
}  # fmt: skip


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, TORCH_DTYPES[name])


# trainer.type -> (TRL config class, TRL trainer class)
TRAINERS = {
    "sft": ("SFTConfig", "SFTTrainer"),
    "dpo": ("DPOConfig", "DPOTrainer"),
    "grpo": ("GRPOConfig", "GRPOTrainer"),
}


@dataclass
class RunResult:
    output_dir: Path
    final_metrics: dict[str, Any]
    step_metrics: list[dict[str, Any]] = field(default_factory=list)


def not_implemented(spec: FineTuneJobSpec) -> list[str]:
    """Fields this trainer accepts in the API but cannot honour yet (refused, not ignored)."""
    found = []
    if spec.output.final_model == "best":
        found.append("output.finalModel: best (needs the checkpoint protocol)")
    if spec.output.push_to_hub is not None:
        found.append("output.pushToHub")
    if spec.distributed.strategy in ("fsdp", "deepspeed"):
        found.append(f"distributed.strategy: {spec.distributed.strategy}")
    if spec.dataset.add_bos is not None or spec.dataset.add_eos is not None:
        found.append("dataset.addBos / dataset.addEos")
    if spec.dataset.response_markers is not None:
        found.append("dataset.responseMarkers")
    return found


class Recipe:
    def __init__(self, job: FineTuneJob, output_dir: Path, *, progress_bar: bool = False) -> None:
        spec = job.spec
        missing = not_implemented(spec)
        if missing:
            raise ValueError("not implemented yet in the trainer: " + "; ".join(missing))
        self.job = job
        self.spec = spec
        self.output_dir = output_dir
        self.progress_bar = progress_bar
        self.data: PreparedData | None = None
        self.tokenizer: Any = None
        self.model: Any = None
        self.trainer: Any = None
        self.token_report: TokenReport | None = None
        self.prompts: list[str] = []
        self.base_answers: list[str] = []
        self.benchmarks: dict[str, tuple[str, list[Any]]] = {}
        self.benchmark_base: dict[str, float] = {}

    def setup(self) -> None:
        # Data first: a bad row should fail the run before minutes go into loading a model.
        self.data = prepare_data(self.spec)
        log.info("%s", self.data.report.render())
        # The tokenizer decides how conversations render; pad must differ from eos.
        self.tokenizer = self._setup_tokenizer()
        # Token checks need the tokenizer but not the model: still cheap to fail here.
        self.token_report = check_tokens(
            self.data,
            self.spec,
            self.tokenizer,
            responses_only=self.spec.trainer.type == "sft" and responses_only(self.spec),
        )
        log.info("%s", self.token_report.render())
        self.model = self._setup_model()
        # Answer the evaluation prompts before training: the "base" side of the comparison.
        self.prompts = self._evaluation_prompts()
        if self.prompts:
            self.base_answers = self._answer(self.model)
        # Benchmarks are scored on the base model too, for the before/after comparison.
        self.benchmarks = self._load_benchmarks()
        self.benchmark_base = self._score_benchmarks(self.model)
        self.trainer = self._setup_trainer()

    def _load_benchmarks(self) -> dict[str, tuple[str, list[Any]]]:
        """name -> (format, samples), read once for the before and after scores."""
        context = FormatContext(Columns(), self.spec.dataset.system_prompt)
        benchmarks = {}
        for benchmark in self.spec.evaluation.benchmarks:
            rows = read_source(benchmark.uri).rows
            samples = [s for row in rows for s in convert_row(benchmark.format, row.data, context)]
            benchmarks[benchmark.name] = (benchmark.format, samples)
        return benchmarks

    def _score_benchmarks(self, model: Any) -> dict[str, float]:
        return {
            name: self._score(model, fmt, samples)
            for name, (fmt, samples) in self.benchmarks.items()
        }

    def _score(self, model: Any, fmt: str, samples: list[Any]) -> float:
        if fmt == "mcq":
            return mcq_accuracy(model, self.tokenizer, samples)
        max_new_tokens = self.spec.evaluation.max_new_tokens
        return qa_exact_match(model, self.tokenizer, samples, max_new_tokens=max_new_tokens)

    def _answer(self, model: Any) -> list[str]:
        max_new_tokens = self.spec.evaluation.max_new_tokens
        return answer_prompts(model, self.tokenizer, self.prompts, max_new_tokens=max_new_tokens)

    def _evaluation_prompts(self) -> list[str]:
        evaluation = self.spec.evaluation
        prompts = list(evaluation.prompts)
        if evaluation.prompts_uri:
            prompts += read_prompts(evaluation.prompts_uri)
        return prompts

    def _setup_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        model = self.spec.model
        tokenizer = AutoTokenizer.from_pretrained(
            model.tokenizer or model.name,
            revision=model.revision,
            trust_remote_code=model.trust_remote_code,
        )
        if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            # pad == eos masks every eos out of the loss: the model never learns to stop.
            tokenizer.add_special_tokens({"pad_token": "<|finetune_pad|>"})
        if self.spec.dataset.chat_template:
            tokenizer.chat_template = self.spec.dataset.chat_template
        elif not tokenizer.chat_template and self.spec.dataset.use_chat_template is not False:
            # Base-model tokenizers (GPT-2, Llama base) have none: use ChatML, whose
            # generation markers let the loss cover only the assistant's turns.
            tokenizer.chat_template = CHAT_TEMPLATE
            log.info("the tokenizer has no chat template: using ChatML")
        return tokenizer

    def _setup_model(self) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        model_spec = self.spec.model
        dtype: Any = "auto" if model_spec.dtype == "auto" else torch_dtype(model_spec.dtype)
        if model_spec.dtype == "auto" and (
            not torch.cuda.is_available() or self.spec.method.type in FULL_WEIGHT_METHODS
        ):
            dtype = torch.float32  # CPU, or full weights without fp32 master copies
        kwargs: dict[str, Any] = {
            "revision": model_spec.revision,
            "trust_remote_code": model_spec.trust_remote_code,
            "dtype": dtype,
        }
        if model_spec.attention != "auto":
            kwargs["attn_implementation"] = model_spec.attention
        quantization = self.spec.method.effective_quantization()
        if quantization is not None:
            kwargs["quantization_config"] = self._quantization_config(quantization)
        model = AutoModelForCausalLM.from_pretrained(model_spec.name, **kwargs)
        if len(self.tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(self.tokenizer))
        model.config.pad_token_id = self.tokenizer.pad_token_id
        # Methods that are not a fresh PEFT config act on the loaded model here.
        method = self.spec.method
        if quantization is not None:
            import peft

            model = peft.prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=bool(self.spec.training.gradient_checkpointing)
            )
        if method.type == "spectrum":
            trainable = apply_spectrum(model, method.spectrum or SpectrumSpec())
            log.info(
                "spectrum: training %d matrices:\n  %s", len(trainable), "\n  ".join(trainable)
            )
        elif method.type == "adapter":
            import peft

            assert method.adapter is not None
            model = peft.PeftModel.from_pretrained(model, method.adapter.uri, is_trainable=True)
        return model

    def _quantization_config(self, quantization: Any) -> Any:
        import torch
        from transformers import BitsAndBytesConfig

        precision = resolve_precision(self.spec, **self._hardware())
        compute = torch_dtype(
            precision if quantization.compute_dtype == "auto" else quantization.compute_dtype
        )
        if quantization.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        sharded = self.spec.distributed.strategy == "fsdp" or (
            self.spec.distributed.deepspeed is not None
            and self.spec.distributed.deepspeed.zero_stage == 3
        )
        storage = quantization.quant_storage
        if storage == "auto":
            storage_dtype = compute if sharded else torch.uint8
        else:
            storage_dtype = torch_dtype(storage)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization.type,
            bnb_4bit_use_double_quant=quantization.double_quant,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=storage_dtype,
        )

    def _setup_trainer(self) -> Any:
        import peft
        import trl

        assert self.data is not None
        kwargs = trainer_config_kwargs(
            self.spec,
            output_dir=str(self.output_dir / "trainer"),
            progress_bar=self.progress_bar,
            **self._hardware(),
        )
        config_class, trainer_class = TRAINERS[self.spec.trainer.type]
        peft_kwargs = peft_config_kwargs(self.spec)
        extra: dict[str, Any] = {}
        if self.spec.trainer.type == "grpo":
            assert self.spec.trainer.grpo is not None
            extra["reward_funcs"], _ = build_rewards(self.spec.trainer.grpo.rewards)
        train, validation = self._datasets()
        if self._pretokenized:
            # Our labels already carry the responses-only mask and the truncation.
            kwargs["dataset_kwargs"] = {"skip_prepare_dataset": True}
            kwargs["assistant_only_loss"] = False
        early = self.spec.training.early_stopping
        if early is not None:
            extra["callbacks"] = [EarlyStopping(early.metric, early.patience, early.threshold)]
        return getattr(trl, trainer_class)(
            model=self.model,
            args=getattr(trl, config_class)(**kwargs),
            train_dataset=train,
            eval_dataset=validation if self.spec.evaluation.strategy != "no" else None,
            processing_class=self.tokenizer,
            peft_config=getattr(peft, peft_kwargs[0])(**peft_kwargs[1]) if peft_kwargs else None,
            **extra,
        )

    @staticmethod
    def _hardware() -> dict[str, bool]:
        """What the precision choice depends on: a CUDA device, and bf16 support on it."""
        import torch

        cuda = torch.cuda.is_available()
        return {"cuda": cuda, "bf16_supported": cuda and torch.cuda.is_bf16_supported()}

    @property
    def _pretokenized(self) -> bool:
        """SFT without packing trains on our own tokenization (see data/tokens.py)."""
        report = self.token_report
        return (
            self.spec.trainer.type == "sft"
            and not self.spec.dataset.packing
            and report is not None
            and "train" in report.encoded
        )

    def _datasets(self) -> tuple[Any, Any]:
        from datasets import Dataset

        assert self.data is not None and self.token_report is not None
        if self._pretokenized:
            encoded = self.token_report.encoded
            train = Dataset.from_list(encoded["train"])
            validation = encoded.get("validation") or None
            return train, Dataset.from_list(validation) if validation else None
        validation = self.data.validation
        return Dataset.from_list(self.data.train), (
            Dataset.from_list(validation) if validation else None
        )

    def train(self) -> RunResult:
        started = time.monotonic()
        outcome = self.trainer.train()
        history = list(self.trainer.state.log_history)
        step_metrics = [h for h in history if "loss" in h]
        final = {
            "train_loss": outcome.training_loss,
            "global_step": outcome.global_step,
            "train_runtime_seconds": round(time.monotonic() - started, 3),
        }
        if self.data and self.data.validation and self.spec.evaluation.strategy != "no":
            final.update(self._final_evaluation(history, outcome.global_step))
        final.update(self._task_scores())
        if self.data and self.data.test and self.spec.trainer.type == "sft":
            from datasets import Dataset

            rows = self.token_report.encoded.get("test") if self._pretokenized else None
            test = Dataset.from_list(rows or self.data.test)
            final.update(self.trainer.evaluate(eval_dataset=test, metric_key_prefix="test"))
        return RunResult(self.output_dir, final, step_metrics)

    def _final_evaluation(self, history: list[dict[str, Any]], step: int) -> dict[str, Any]:
        """Validation metrics of the final weights: the trainer's own evaluation when it ran
        at the last step (strategy epoch usually does), else one more pass."""
        last = next((h for h in reversed(history) if "eval_loss" in h), None)
        if last is not None and last.get("step") == step:
            return {k: v for k, v in last.items() if k.startswith("eval_") or k == "epoch"}
        return dict(self.trainer.evaluate())

    def _task_scores(self) -> dict[str, float]:
        """accuracy / exact_match on the validation split, and the benchmarks."""
        assert self.data is not None
        evaluation, fmt = self.spec.evaluation, self.spec.dataset.format
        model = self.trainer.model
        scores: dict[str, float] = {}
        if self.data.validation and evaluation.strategy != "no":
            if "accuracy" in evaluation.metrics and fmt == "mcq":
                scores["eval_accuracy"] = mcq_accuracy(model, self.tokenizer, self.data.validation)
            if "exact_match" in evaluation.metrics and fmt in ("qa", "mcq"):
                scores["eval_exact_match"] = self._score(model, "qa", self.data.validation)
        for name, tuned in self._score_benchmarks(model).items():
            scores[f"benchmark/{name}"] = tuned
            scores[f"benchmark/{name}/base"] = self.benchmark_base[name]
        return scores

    @property
    def is_main_process(self) -> bool:
        """Rank 0 of the job: the one process that writes shared files."""
        return bool(self.trainer.is_world_process_zero())

    def save(self, result: RunResult) -> Path:
        """Final weights (the adapter for PEFT methods), tokenizer and metrics files.

        Every rank calls save_model (sharded strategies gather through it); only rank 0
        writes the rest."""
        final_dir = self.output_dir / "final"
        self.trainer.save_model(str(final_dir))
        if not self.is_main_process:
            return final_dir
        self.tokenizer.save_pretrained(str(final_dir))
        history = self.trainer.state.log_history
        epoch_metrics = [h for h in history if "eval_loss" in h]
        files = {
            "step_metrics.json": result.step_metrics,
            "epoch_metrics.json": epoch_metrics,
            "final_metrics.json": result.final_metrics,
        }
        for name, content in files.items():
            (self.output_dir / name).write_text(json.dumps(content, indent=2))
        assert self.data is not None
        result_file = {
            "name": self.job.name,
            "model": str(final_dir),
            "method": self.spec.method.type,
            "trainer": self.spec.trainer.type,
            "metrics": result.final_metrics,
            "data": self.data.report.splits,
        }
        curve = plot_loss_curve(
            result.step_metrics, epoch_metrics, self.output_dir / "loss_curve.png"
        )
        if self.prompts:
            tuned = self._answer(self.trainer.model)
            comparison = [
                {"prompt": p, "base": b, "fine_tuned": t}
                for p, b, t in zip(self.prompts, self.base_answers, tuned, strict=True)
            ]
            (self.output_dir / "model_comparison.json").write_text(json.dumps(comparison, indent=2))
        if self.spec.output.merge_adapter:
            result_file["merged_model"] = str(self._save_merged(final_dir))
        if curve is not None:
            result_file["loss_curve"] = str(curve)
        (self.output_dir / "result.json").write_text(json.dumps(result_file, indent=2))
        return final_dir

    def publish(self) -> list[str]:
        """Copy the run's results to output.uri (rank 0; the trainer's scratch stays)."""
        if not self.is_main_process:
            return []
        output = self.spec.output
        store = open_store(output.uri, s3=output.s3)
        return upload_tree(store, self.output_dir, "", skip=("trainer",))

    def _save_merged(self, adapter_dir: Path) -> Path:
        """Base + adapter merged into plain weights. The base is reloaded unquantized, so a
        QLoRA adapter merges into full-precision weights rather than into 4-bit ones."""
        import peft
        import torch
        from transformers import AutoModelForCausalLM

        model_spec = self.spec.model
        dtype = torch.float32 if model_spec.dtype == "auto" else torch_dtype(model_spec.dtype)
        base = AutoModelForCausalLM.from_pretrained(
            model_spec.name, revision=model_spec.revision, dtype=dtype,
            trust_remote_code=model_spec.trust_remote_code,
        )  # fmt: skip
        if len(self.tokenizer) > base.get_input_embeddings().weight.shape[0]:
            base.resize_token_embeddings(len(self.tokenizer))
        merged = peft.PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        merged_dir = self.output_dir / "merged"
        merged.save_pretrained(str(merged_dir))
        self.tokenizer.save_pretrained(str(merged_dir))
        return merged_dir
