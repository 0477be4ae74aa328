"""The fine-tuning recipe: one FineTuneJob spec in, a trained adapter (or model) out.

Reads top to bottom, in dependency order:

    recipe = Recipe(job, output_dir)
    recipe.setup()              # data → tokenizer → token checks → model → trainer
    result = recipe.train()     # + evaluation, task scores, test split, benchmarks, harness
    recipe.save(result)         # weights, tokenizer, metrics, comparison, loss curve, result.json
    recipe.publish()            # copy the results to output.uri (rank 0)

In a cluster, rank 0 reports its progress to the operator all along
(fttrainer/reporting/progress.py).

Every method.type (full, lora, qlora, dora, adapter, spectrum, prefix, prompt) with SFT,
DPO or GRPO.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftapi.progress import heartbeat_seconds
from ftapi.v1alpha1 import FineTuneJob, FineTuneJobSpec, SpectrumSpec
from ftapi.v1alpha1.method import FULL_WEIGHT_METHODS
from ftapi.v1alpha1.model import is_relative_path
from ftapi.v1alpha1.registry import merged_reference

from .arguments import (
    bitsandbytes_kwargs,
    check_strategy,
    peft_config_kwargs,
    resolve_attention,
    resolve_device,
    resolve_partial_recompute,
    resolve_precision,
    responses_only,
    router_loss_kwargs,
    trainer_config_kwargs,
)
from .artefacts import plot_loss_curve
from .callbacks import (
    CheckpointUpload,
    EarlyStopping,
    FirstStep,
    GracefulStop,
    NonFiniteGuard,
    ProgressCallback,
    RecomputeFirstLayers,
    StallWatch,
    Stopped,
    TrackerIds,
)
from .checkpointing.protocol import job_identity, parse_step
from .checkpointing.resume import restore, stop_at_max_steps
from .checkpointing.store import CheckpointStore
from .data.image_tokens import ImageCosts, image_costs, stored_sizes
from .data.prepare import PreparedData, prepare_data, refuse_images
from .data.tokens import TokenReport, check_tokens
from .data.vision_rows import vision_transform
from .distributed import check_saved_weights, confirm_strategy, unsharded_loading
from .evaluation import Evaluator
from .model.adapters import ModelPlan, name_backbone, plan_model
from .model.attention import MODEL_ATTENTION, torch_varlen_attention
from .model.attention import register as register_attention
from .model.memory_plan import ModelShape, recomputed_layers_to_fit
from .model.meta import meta_model, model_class
from .model.moe import routers
from .model.sources import localized
from .model.spectrum import apply_spectrum
from .model.vision import freeze, is_vision_language, vision_parts
from .publishing.hub import push_to_hub, push_token
from .reporting.progress import ProgressReporter
from .reporting.tracking import (
    TrackerRuns,
    environment,
    read_tracker_ids,
    registry_tags,
    tracker_env,
)
from .rewards import build_rewards
from .startup import StartupClock
from .storage import LocalStore, Store, open_store, upload_tree
from .supervision.divergence import LossWatch, RollBack, SpikeWatch
from .supervision.faults import Faults
from .supervision.ranks import ComputeTimer, RankReporter
from .supervision.watchdog import CollectiveTimeout, Watchdog
from .templates import CHAT_TEMPLATE
from .trainer_class import TrainerHooks, trainer_class

log = logging.getLogger("fttrainer")
# Spec dtype and precision names -> torch dtype attribute names.
TORCH_DTYPES = {
    "bfloat16": "bfloat16",
    "float16": "float16",
    "float32": "float32",
    "uint8": "uint8",
    "bf16": "bfloat16",
    "fp16": "float16",
    "fp32": "float32",
}


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, TORCH_DTYPES[name])


UNPLANNED = "not read yet"
"""ModelPlan.kind until the model is read."""
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
    dataset = spec.dataset
    tokens_are_ours = dataset.add_bos, dataset.add_eos, dataset.response_markers
    if spec.trainer.type != "sft" and any(v is not None for v in tokens_are_ours):
        # DPO and GRPO tokenize inside TRL, which follows the tokenizer and template.
        found.append(f"dataset.addBos/addEos/responseMarkers with trainer {spec.trainer.type}")
    return found


class Recipe:
    def __init__(
        self,
        job: FineTuneJob,
        output_dir: Path,
        *,
        progress_bar: bool = False,
        progress: ProgressReporter | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        spec = job.spec
        missing = not_implemented(spec)
        if missing:
            raise ValueError("not implemented yet in the trainer: " + "; ".join(missing))
        if spec.output.push_to_hub is not None:
            push_token()  # no token: fail now, not after hours of training
        if spec.output.oci is not None:  # an unreadable registry Secret, likewise
            from ftapi.constants import ENV_OCI_PUSH_CA, ENV_OCI_PUSH_SECRET

            from .publishing.oci import OciError, connect

            try:
                connect(
                    spec.output.oci.reference,
                    secret_env=ENV_OCI_PUSH_SECRET,
                    ca_env=ENV_OCI_PUSH_CA,
                ).close()
            except OciError as exc:  # connect() makes no request: only the Secret is wrong
                raise ValueError(f"spec.output.oci: {exc}") from None
        # Phases from here on; `finetune run` gives one it started before its imports (one
        # process, one run: a Recipe used as a library, as the tests do, is never stopped).
        self.watchdog = watchdog or Watchdog(spec.run_policy.stall_detection)
        stall = spec.run_policy.stall_detection
        if stall.enabled and spec.distributed.nccl_timeout_seconds is None:  # a backstop
            self.watchdog.on_deadline = CollectiveTimeout().follow
        self.faults = Faults.from_env()
        self.job = job
        self.spec = spec
        self.source_model = spec.model.name  # before setup() localizes an s3:// one
        self.graceful = GracefulStop()
        self.output_dir = output_dir
        self.progress_bar = progress_bar
        self.data: PreparedData | None = None
        self.tokenizer: Any = None
        # A vision-language model's processor (its tokenizer is self.tokenizer); None for a
        # text-only model.
        self.processor: Any = None
        self._config: Any = None  # the base model's config (_model_config)
        self.model: Any = None
        self.trainer: Any = None
        self.token_report: TokenReport | None = None
        self.evaluator: Evaluator | None = None
        self.plan = ModelPlan(moe=None, targets=None, refused=[], kind=UNPLANNED)
        # What the trackers in logging.reportTo read; no credentials (those come from Secrets).
        self.tracker_env = tracker_env(
            spec.logging, job_name=job.name, output_dir=output_dir.absolute()
        )
        self.tracker_runs = TrackerRuns(spec.logging, job_name=job.name, env=self.tracker_env)
        output = spec.output
        self.checkpoints = CheckpointStore(open_store(output.uri, s3=output.s3), job_identity(job))
        self.resumed_from: Path | None = None
        self.saved: tuple[Path, dict[str, Any]] | None = None
        """What save() left for publish(): the model to register and the final metrics."""
        # To the job's FineTuneJobProgress (rank 0 in a cluster); else a no-op.
        self.progress = (
            progress
            if progress is not None
            else ProgressReporter.from_env(
                interval=spec.logging.status_interval_seconds,
                heartbeat=heartbeat_seconds(spec.run_policy.stall_detection.minimum_seconds),
            )
        )
        # Every rank's own liveness and pace (the operator names quiet and slow ranks).
        self.ranks = RankReporter.from_env(
            interval=heartbeat_seconds(spec.run_policy.stall_detection.minimum_seconds)
        )
        if self.ranks.enabled:  # a stall's verdict and stack in this rank's last report
            self.watchdog.report_stall = self.ranks.stalled
        self.compute_timer = ComputeTimer()
        self.startup_clock = StartupClock()  # where the time before the first step goes

    def setup(self) -> None:
        self.progress.report_stage("starting")  # the pod is up: setup may take minutes
        self.ranks.started()
        # From here a SIGTERM waits for a step boundary (before the first step, nothing is
        # lost: the run stops there, see GracefulStop).
        self.graceful.install()
        self.watchdog.note("checking the devices")
        check_strategy(self.spec, **self._hardware())  # seconds, before data and model
        # Data first: a bad row should fail the run before minutes go into loading a model.
        self.watchdog.note("reading and preparing the data")
        with self.startup_clock.data():
            self.data = prepare_data(self.spec, mirror=self._data_mirror)
        log.info("%s", self.data.report.render())
        # An s3:// model, tokenizer or adapter is fetched now (transformers loads local
        # folders and hub ids only); reports keep naming the spec's own source.
        self.watchdog.note("downloading the model")
        self.spec = localized(self.spec)
        # The tokenizer decides how conversations render; pad must differ from eos. A model
        # that reads images comes with a processor, which holds its tokenizer.
        self.tokenizer = self._setup_tokenizer()
        if self.processor is None:  # images in rows a text-only model would read as text
            refuse_images(self.data, self.spec.dataset.train.uri, self.spec.model.name)
        # Token checks need the tokenizer but not the model: still cheap to fail here.
        with self.startup_clock.data():
            self.token_report = check_tokens(
                self.data,
                self.spec,
                self.tokenizer,
                responses_only=self.spec.trainer.type == "sft" and responses_only(self.spec),
                mirror=self._data_mirror,
                images=self._image_costs(),
            )
        log.info("%s", self.token_report.render())
        # The evaluation's own inputs (prompts, benchmarks, harness tasks): read before the
        # model loads, so that a bad one fails in seconds.
        self.evaluator = Evaluator(
            self.spec, self.tokenizer, self.data, self.output_dir, self.processor
        )
        self.evaluator.load_inputs()
        # The model as its config describes it: a method it cannot serve fails here, in
        # seconds, before its weights are read.
        self.watchdog.note("reading the model's config")
        self.plan = self._plan_model()
        self.watchdog.note("loading the model")
        self.model = self._setup_model()
        if self.plan.kind == UNPLANNED:  # planned on the loaded model instead, still pre-training
            self.plan = self._plan_model(self.model)
        # Everything measured besides the loss, "before" first: the base model's answers to
        # the evaluation prompts and its task scores, while the weights are still the base's.
        self.evaluator.before_training(self.model)
        # The trackers' callbacks read their settings from the environment (TensorBoard
        # when the trainer creates it, MLflow and W&B when training starts).
        self.watchdog.note("creating the trainer and joining the other ranks")
        with environment(self.tracker_env):
            self.trainer = self._setup_trainer()
        log.info("distributed: %s", confirm_strategy(self.trainer, self.spec.distributed))
        self.startup_clock.setup_done(data_reused=self.data.reused and self.token_report.reused)

    def _model_config(self) -> Any:
        """The base model's config, read once (the spec's model is local by then)."""
        if self._config is None:
            from transformers import AutoConfig

            model = self.spec.model
            self._config = AutoConfig.from_pretrained(
                model.name, revision=model.revision, trust_remote_code=model.trust_remote_code
            )
        return self._config

    def _setup_tokenizer(self) -> Any:
        from transformers import AutoProcessor, AutoTokenizer

        model = self.spec.model
        for where, name in (("model.name", model.name), ("model.tokenizer", model.tokenizer)):
            if name and _names_a_missing_directory(name):
                raise ValueError(
                    f"spec.{where}: {name!r}: no such directory (a path; a hub "
                    "id looks like org/name)"
                )
        source = {"revision": model.revision, "trust_remote_code": model.trust_remote_code}
        config = self._model_config()
        if is_vision_language(config):
            vision_parts(config)  # a family this trainer does not serve: refused now
            self.processor = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
                model.tokenizer or model.name, **source
            )
            tokenizer = self.processor.tokenizer
        else:
            tokenizer = AutoTokenizer.from_pretrained(model.tokenizer or model.name, **source)
        if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            # pad == eos masks every eos out of the loss: the model never learns to stop.
            tokenizer.add_special_tokens({"pad_token": "<|finetune_pad|>"})
        if self.processor is not None:
            self._set_processor_template(model.name)
            return tokenizer
        if self.spec.dataset.chat_template:
            tokenizer.chat_template = self.spec.dataset.chat_template
        elif not tokenizer.chat_template and self.spec.dataset.use_chat_template is not False:
            # Base-model tokenizers (GPT-2, Llama base) have none: use ChatML, whose
            # generation markers let the loss cover only the assistant's turns.
            tokenizer.chat_template = CHAT_TEMPLATE
            log.info("the tokenizer has no chat template: using ChatML")
        return tokenizer

    def _image_costs(self) -> ImageCosts | None:
        """What each kept image costs in tokens, as this model's processor expands it at
        vision.maxImagePixels; None for a text-only model."""
        if self.processor is None:
            return None
        assert self.data is not None
        sizes = stored_sizes(self.data.image_digests(), self.data.image_path)
        return image_costs(self.processor, sizes, self.spec.vision.max_image_pixels)

    def _set_processor_template(self, name: str) -> None:
        """The processor's chat template (it places the images): the spec's, else the
        family's, with generation markers where TRL has them for the family (what lets the
        loss cover the assistant's turns only; TRL would swap it in too)."""
        from trl.chat_template_utils import get_training_chat_template

        processor = self.processor
        if self.spec.dataset.chat_template:
            processor.chat_template = self.spec.dataset.chat_template
        if not processor.chat_template:
            raise ValueError(
                f"spec.model.name: {name!r}: its processor has no chat template (set "
                "dataset.chatTemplate): images are placed by the template"
            )
        training = get_training_chat_template(processor)
        if training is not None:
            processor.chat_template = training
        processor.tokenizer.chat_template = processor.chat_template

    def _plan_model(self, loaded: Any = None) -> ModelPlan:
        """The plan on the model built from its config on the meta device, or on `loaded`
        where a model cannot be built so (then the refusals come after loading, still
        before any step)."""
        model = self.spec.model
        if loaded is None:
            try:
                loaded = meta_model(
                    model.name, revision=model.revision, trust_remote_code=model.trust_remote_code
                )
            except Exception as exc:  # an architecture that cannot be built on meta
                log.warning("model: not built from its config (%s); planned once loaded", exc)
                return dataclasses.replace(self.plan, kind=UNPLANNED)
        plan = plan_model(loaded, self.spec)
        if plan.refused:
            raise ValueError("spec.method: " + "; ".join(plan.refused))
        log.info("model: %s", plan.kind)
        if plan.targets is not None:
            log.info("%s", plan.targets.render())
        return plan

    def _setup_model(self) -> Any:
        import torch

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
        attention = resolve_attention(
            self.spec,
            cuda=self._hardware()["cuda"],
            flash_attn=importlib.util.find_spec("flash_attn") is not None,
            varlen=torch_varlen_attention() is not None,
        )
        if attention == MODEL_ATTENTION:
            register_attention()
        if attention is not None:
            kwargs["attn_implementation"] = attention
            log.info("attention: %s", attention)
        quantization = self.spec.method.effective_quantization()
        if quantization is not None:
            kwargs["quantization_config"] = self._quantization_config()
        model: Any = model_class(self._model_config()).from_pretrained(model_spec.name, **kwargs)
        name_backbone(model)  # where TRL and PEFT look for the decoder (Llama 4)
        if len(self.tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(self.tokenizer))
        model.config.get_text_config().pad_token_id = self.tokenizer.pad_token_id
        if self.processor is not None:  # the image side stays as loaded unless trained
            freeze(model, vision_parts(model.config, self.spec.vision))
        # Methods that are not a fresh PEFT config act on the loaded model here.
        method = self.spec.method
        if quantization is not None:
            import peft

            model = peft.prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
                model, use_gradient_checkpointing=bool(self.spec.training.gradient_checkpointing)
            )
        if method.type == "spectrum":
            frozen = routers(model, self.plan.moe) if self.plan.moe else []
            trainable = apply_spectrum(model, method.spectrum or SpectrumSpec(), frozen=frozen)
            log.info(
                "spectrum: training %d matrices:\n  %s", len(trainable), "\n  ".join(trainable)
            )
        elif method.type == "adapter":
            import peft

            assert method.adapter is not None
            model = peft.PeftModel.from_pretrained(model, method.adapter.uri, is_trainable=True)
        return model

    def _quantization_config(self) -> Any:
        from transformers import BitsAndBytesConfig

        precision = resolve_precision(self.spec, **self._hardware())
        kwargs = bitsandbytes_kwargs(self.spec, precision=precision)
        assert kwargs is not None
        for key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
            if key in kwargs:
                kwargs[key] = torch_dtype(kwargs[key])
        return BitsAndBytesConfig(**kwargs)  # type: ignore[no-untyped-call]

    def _setup_trainer(self) -> Any:
        import peft
        import trl

        assert self.data is not None
        hardware = self._hardware()
        planned = self._recompute_plan(hardware["cuda"])
        kwargs = trainer_config_kwargs(
            self.spec,
            output_dir=str(self.output_dir / "trainer"),
            progress_bar=self.progress_bar,
            layer_classes=getattr(self.model, "_no_split_modules", None) or (),
            liger_installed=importlib.util.find_spec("liger_kernel") is not None,
            planned_recomputed_layers=planned[0] if planned else None,
            mps=self._device == "mps",
            **hardware,
        )
        log.info(
            "throughput: padding-free %s, liger kernels %s, activation recompute %s, "
            "torch.compile %s, optimizer %s",
            kwargs.get("padding_free", False),
            kwargs["use_liger_kernel"],
            kwargs["activation_checkpointing"],
            kwargs["torch_compile"],
            kwargs["optim"],
        )
        config_class, trainer_class_name = TRAINERS[self.spec.trainer.type]
        # What the adapter adapts: the plan's names, the loaded model's too.
        peft_kwargs = peft_config_kwargs(self.spec, self.plan.targets)
        kwargs.update(router_loss_kwargs(self.spec, self.plan.moe))
        extra: dict[str, Any] = {}
        if self.spec.trainer.type == "grpo":
            assert self.spec.trainer.grpo is not None
            extra["reward_funcs"], _ = build_rewards(
                self.spec.trainer.grpo.rewards, self.spec.output.s3
            )
        train, validation = self._datasets()
        if self._pretokenized:
            # Our labels already carry the responses-only mask and the truncation; TRL
            # only packs them (it keeps a "labels" column as it is).
            if not self.spec.dataset.packing:
                kwargs["dataset_kwargs"] = {"skip_prepare_dataset": True}
            kwargs["assistant_only_loss"] = False
        upload = CheckpointUpload(
            self.checkpoints,
            self.spec.output.save_total_limit,
            keep_best=self.spec.output.final_model == "best",
        )
        # The tracker run ids go into the checkpoint before it is uploaded. Progress after
        # the upload: a checkpoint is reported once its manifest is written.
        training = self.spec.training
        self.loss_watch = LossWatch()
        self.non_finite_guard = NonFiniteGuard(
            self.loss_watch,
            self.progress,
            action=training.on_non_finite,
            limit=training.non_finite_limit,
            learning_rate_factor=training.rollback_learning_rate_factor,
            record_rollback=self._record_rollback,
            faults=self.faults,
            spikes=SpikeWatch(
                0.0 if self.spec.trainer.type == "grpo" else training.loss_spike_factor
            ),
        )
        callbacks: list[Any] = [
            StallWatch(self.watchdog, self.ranks, self.compute_timer),
            self.non_finite_guard,  # before the upload: a non-finite checkpoint never is
            TrackerIds(self.tracker_runs),
            upload,
            ProgressCallback(self.progress, upload),
            self.graceful,  # SIGTERM: save at the end of the step, then stop
            FirstStep(self.startup_clock, self.progress),
        ]
        if planned is not None:
            partial = resolve_partial_recompute(
                self.spec, cuda=hardware["cuda"], planned_layers=planned[0], layers=planned[1]
            )
            if partial is not None:
                callbacks.append(RecomputeFirstLayers(partial))
        extra["callbacks"] = callbacks  # early stopping joins after the base evaluation
        assert self.evaluator is not None
        hooks = TrainerHooks(
            watchdog=self.watchdog,
            loss_watch=self.loss_watch,
            compute_timer=self.compute_timer,
            log_hooks=self.evaluator.log_hooks(),  # perplexity, MCQ scores at every evaluation
        )
        trainer_type = trainer_class(getattr(trl, trainer_class_name), hooks, self.faults)
        with warnings.catch_warnings():
            # PEFT checks alpha_pattern against the modules it wraps, not the parameters: the
            # fused gate/up experts' pattern applies and is reported as unmatched.
            warnings.filterwarnings("ignore", "The following alpha_pattern keys did not match")
            return trainer_type(
                model=self.model,
                args=getattr(trl, config_class)(**kwargs),
                train_dataset=train,
                eval_dataset=validation if self.spec.evaluation.strategy != "no" else None,
                processing_class=self.processor or self.tokenizer,
                peft_config=getattr(peft, peft_kwargs[0])(**peft_kwargs[1])
                if peft_kwargs
                else None,
                **extra,
            )

    def _recompute_plan(self, cuda: bool) -> tuple[int, int] | None:
        """(decoder layers to recompute, all of them): the memory plan against this
        device's memory (what is free now plus what this process already holds: the loaded
        weights are part of the estimate); None when training.gradientCheckpointing is set
        explicitly or there is no GPU."""
        if not cuda or self.spec.training.gradient_checkpointing is not None:
            return None
        import torch

        free, _ = torch.cuda.mem_get_info()
        budget = free + torch.cuda.memory_reserved()
        model = self.spec.model
        shape = ModelShape.from_pretrained(model.name, trust_remote_code=model.trust_remote_code)
        layers, needed = recomputed_layers_to_fit(shape, self.spec, budget)
        log.info(
            "memory plan: %.1f GiB with activation recompute on %d of %d layers, "
            "%.1f GiB on this device",
            needed / 2**30,
            layers,
            shape.layers,
            budget / 2**30,
        )
        return layers, shape.layers

    def _hardware(self) -> dict[str, bool]:
        """What the precision choice depends on: a CUDA device (unless training.device says
        cpu), and bf16 support on it."""
        import torch

        cuda = self._device == "cuda"
        return {"cuda": cuda, "bf16_supported": cuda and torch.cuda.is_bf16_supported()}

    @functools.cached_property
    def _device(self) -> str:
        """cuda, mps or cpu (decided once: the fallback warning is given once)."""
        import torch

        device = resolve_device(
            self.spec,
            cuda_available=torch.cuda.is_available(),
            mps_available=torch.backends.mps.is_available(),
        )
        wanted = self.spec.training.device
        if wanted not in ("auto", device):
            log.warning("training.device %s: no such device here; training on CPU", wanted)
        return device

    @functools.cached_property
    def _data_mirror(self) -> Store | None:
        """Where the prepared data is kept for the job's other nodes and restarted attempts:
        `prepared/` of an s3:// output location (a local one is this machine's: its node
        cache already serves)."""
        output = self.spec.output
        if not output.uri.startswith("s3://"):
            return None
        return open_store(f"{output.uri.rstrip('/')}/prepared", s3=output.s3)

    @property
    def _pretokenized(self) -> bool:
        """SFT trains on our own tokenization (see data/tokens.py)."""
        report = self.token_report
        return self.spec.trainer.type == "sft" and report is not None and "train" in report.encoded

    def _datasets(self) -> tuple[Any, Any]:
        """The train and validation datasets TRL gets: mapped from the node's prepared data
        (SFT: our tokens; DPO/GRPO: the samples, typed losslessly by data/typed.py)."""
        report = self.token_report
        assert report is not None
        datasets = report.encoded if self._pretokenized else report.typed
        train, validation = datasets["train"], datasets.get("validation")
        if validation is not None and not len(validation):
            validation = None
        if self.processor is not None:  # pictures opened as batches are built
            assert self.data is not None
            transform = vision_transform(self.data.image_path, self.spec.vision.max_image_pixels)
            train = train.with_transform(transform)
            validation = validation.with_transform(transform) if validation is not None else None
        return train, validation

    def train(self) -> RunResult:
        """Train, evaluate, score; the tracker runs (rank 0) cover all of it and end with
        the final metrics. A resumed attempt continues the runs its checkpoint names."""
        runs = self.tracker_runs
        main = self.is_main_process
        # The newest complete checkpoint of this job, if a previous attempt left one.
        self.resumed_from = restore(
            self.checkpoints,
            Path(self.trainer.args.output_dir),
            main=main,
            local_main=bool(self.trainer.is_local_process_zero()),
        )
        self.non_finite_guard.prepare(
            rollbacks=len(self.checkpoints.rollbacks()), resumed_step=_step_of(self.resumed_from)
        )
        with environment(self.tracker_env):
            callbacks_env = runs.start(read_tracker_ids(self.resumed_from)) if main else {}
            try:
                with environment(callbacks_env):
                    result = self._train()
            except (Stopped, RollBack):
                raise  # the runs go on in the attempt that resumes from the checkpoint
            except BaseException:
                if main:
                    try:  # mark the runs failed; never hide the error that failed the run
                        runs.finish({}, step=self.trainer.state.global_step, failed=True)
                    except Exception:
                        log.exception("could not mark the tracker runs failed")
                raise
            if main:
                runs.finish(result.final_metrics, step=self.trainer.state.global_step)
        return result

    def _train(self) -> RunResult:
        started = time.monotonic()
        assert self.evaluator is not None
        before = self.evaluator.base_evaluation(self.trainer)
        early = self.spec.training.early_stopping
        if early is not None:  # watches the evaluations of training only
            self.trainer.add_callback(EarlyStopping(early.metric, early.patience, early.threshold))
        stop_at_max_steps(self.trainer)
        outcome = self.trainer.train(resume_from_checkpoint=self.resumed_from)
        self.graceful.raise_if_stopped()  # not finished: no final model, no result
        self.watchdog.enter("evaluating")
        self.progress.report_stage("evaluating")  # final evaluation and task scores
        history = list(self.trainer.state.log_history)
        # A step skipped for a non-finite loss is a record too: no loss, skipped_steps.
        step_metrics = [h for h in history if "loss" in h or "skipped_steps" in h]
        losses = [h["loss"] for h in step_metrics if "loss" in h]
        started_at = _step_of(self.resumed_from) or 0
        train_loss = self.loss_watch.mean_loss(
            outcome.training_loss, outcome.global_step - started_at
        )
        if outcome.global_step == _step_of(self.resumed_from) and losses:
            # Resumed from the final checkpoint: no step ran now, the run's losses are history.
            train_loss = sum(losses) / len(losses)
        final = {
            "train_loss": train_loss,
            "global_step": outcome.global_step,
            "train_runtime_seconds": round(time.monotonic() - started, 3),
        }
        report = self.token_report
        encoded_test = report.encoded.get("test") if report and self._pretokenized else None
        final.update(
            self.evaluator.after_training(
                self.trainer, history, outcome.global_step, before, encoded_test=encoded_test
            )
        )
        return RunResult(self.output_dir, final, step_metrics)

    @property
    def is_main_process(self) -> bool:
        """Rank 0 of the job: the one process that writes shared files."""
        return bool(self.trainer.is_world_process_zero())

    def save(self, result: RunResult) -> Path:
        """Final weights (the adapter for PEFT methods), tokenizer and metrics files.

        Every rank calls save_model (sharded strategies gather through it); only rank 0
        writes the rest."""
        self.watchdog.enter("saving")  # the final save, then publish
        self.progress.report_stage("saving", result.final_metrics)
        final_dir = self.output_dir / "final"
        self.trainer.save_model(str(final_dir))
        # Every rank answers: under ZeRO-3 and FSDP each forward gathers weights from all.
        assert self.evaluator is not None
        evaluator = self.evaluator
        tuned = evaluator.answer_prompts(self.trainer.model)
        if not self.is_main_process:
            return final_dir
        check_saved_weights(final_dir)  # ZeRO-3 can save an adapter of empty tensors
        (self.processor or self.tokenizer).save_pretrained(str(final_dir))
        history = self.trainer.state.log_history
        epoch_metrics = [h for h in history if "eval_loss" in h]
        files = {
            "step_metrics.json": result.step_metrics,
            "epoch_metrics.json": epoch_metrics,
            # The metrics, then the configuration they came from (defaults resolved).
            "final_metrics.json": {**result.final_metrics, "config": self.job.spec.to_dict()},
        }
        if evaluator.details:
            files["evaluation_details.json"] = evaluator.details
        for name, content in files.items():
            (self.output_dir / name).write_text(json.dumps(content, indent=2))
        assert self.data is not None
        result_file = {
            "name": self.job.name,
            # Where the results are once published (the output location, not this scratch).
            "model": self._published(final_dir),
            "checkpoints": self.checkpoints.uri,
            "resumed_from_step": _step_of(self.resumed_from),
            "files": {
                name: self._published(self.output_dir / name)
                for name in ("step_metrics.json", "epoch_metrics.json", "final_metrics.json")
            },
            "method": self.spec.method.type,
            "trainer": self.spec.trainer.type,
            "metrics": result.final_metrics,
            "data": self.data.report.splits,
            "startup": self.startup_clock.startup.to_dict(),
        }
        if self.plan.targets is not None:
            result_file["adapter"] = self.plan.targets.summary()
        curve = plot_loss_curve(
            result.step_metrics, epoch_metrics, self.output_dir / "loss_curve.png"
        )
        if evaluator.prompts:
            comparison = evaluator.comparison(tuned)
            (self.output_dir / "model_comparison.json").write_text(json.dumps(comparison, indent=2))
        registered = final_dir
        if self.spec.output.merge_adapter:
            with unsharded_loading(self.trainer.args):  # rank 0 alone: no ZeRO-3 zero.Init
                registered = self._save_merged(final_dir)
            result_file["merged_model"] = self._published(registered)
        self.saved = (registered, result.final_metrics)
        if curve is not None:
            result_file["loss_curve"] = self._published(curve)
        if evaluator.prompts:
            result_file["model_comparison"] = self._published(
                self.output_dir / "model_comparison.json"
            )
        (self.output_dir / "result.json").write_text(json.dumps(result_file, indent=2))
        return final_dir

    def _record_rollback(self, *, step: int, resume_from: int | None, message: str) -> None:
        """training.onNonFinite rollback (rank 0): the attempt that restarts reads it."""
        self.checkpoints.record_rollback(
            {
                "at_step": step,
                "resume_from": resume_from,
                "message": message,
                "learning_rate_factor": self.spec.training.rollback_learning_rate_factor,
            }
        )

    def _published(self, path: Path) -> str:
        relative = path.relative_to(self.output_dir).as_posix()
        return f"{self.spec.output.uri.rstrip('/')}/{relative}"

    def publish(self) -> list[str]:
        """Copy the run's results to output.uri (rank 0; the trainer's scratch stays)."""
        if not self.is_main_process:
            return []
        self.progress.report_stage("publishing")
        output = self.spec.output
        store = self.checkpoints.store
        if isinstance(store, LocalStore) and store.root.resolve() == self.output_dir.resolve():
            uploaded: list[str] = []  # output.uri is the run directory: already there, once
        else:
            # The same store (and S3 client) the checkpoints go to: output.uri.
            uploaded = upload_tree(store, self.output_dir, "", skip=("trainer",))
        final_uri = self._published(self.output_dir / "final")
        self.progress.published(model_uri=final_uri)  # named in status whatever follows
        if output.push_to_hub is not None:
            folders = {"": self.output_dir / "final"}
            if (self.output_dir / "merged").is_dir():
                folders["merged"] = self.output_dir / "merged"
            push_to_hub(
                output.push_to_hub,
                folders,
                commit_message=f"FineTuneJob {self.job.name}: {self.spec.method.type} "
                f"{self.spec.trainer.type} fine-tune of {self.source_model}",
            )
        images = self._push_images() if output.oci is not None else {}
        self._register(local=isinstance(store, LocalStore), images=images)
        # Last, once every publish step is done: the same job started again is then a new
        # run. Until then a restart resumes from the final checkpoint (training ends on
        # one), evaluates and publishes again, and trains nothing.
        self.checkpoints.mark_done(self.trainer.state.global_step)
        self.progress.finish(model_uri=final_uri)
        self.watchdog.close()
        return uploaded

    def _push_images(self) -> dict[str, str]:
        """output.oci: final/ (and merged/) as images with their lineage; {folder: the image
        pinned by digest}, also in status (model_image) and result.json."""
        from ftapi.constants import ENV_OCI_PUSH_CA, ENV_OCI_PUSH_SECRET
        from ftapi.contract import release

        from .publishing.lineage import BaseModel, Content, image_annotations
        from .publishing.oci import connect, push_model

        oci = self.spec.output.oci
        assert oci is not None and self.saved is not None
        full = self.spec.method.type in FULL_WEIGHT_METHODS
        targets: list[tuple[str, str, Content]] = [
            ("final", oci.reference, "model" if full else "adapter")
        ]
        if (self.output_dir / "merged").is_dir():
            targets.append(("merged", merged_reference(oci.reference), "merged-model"))
        base = BaseModel(self.source_model, self.spec.model.revision, self._base_digest())
        assert self.data is not None
        client = connect(
            oci.reference,
            secret_env=ENV_OCI_PUSH_SECRET,
            ca_env=ENV_OCI_PUSH_CA,
            plain_http=oci.plain_http,
        )
        pushed: dict[str, str] = {}
        try:
            for folder, reference, content in targets:
                notes = image_annotations(
                    self.job,
                    content=content,
                    base=base,
                    data=self.data.report.digests,
                    metrics=self.saved[1],
                    trainer_release=release("finetune-trainer"),
                    images=self.data.image_digests(),
                )
                digest = push_model(self.output_dir / folder, reference, client, annotations=notes)
                pushed[folder] = f"{reference}@{digest}"
                log.info("pushed %s/ to %s", folder, pushed[folder])
        finally:
            client.close()
        self.progress.pushed_images(
            model_image=pushed["final"], merged_model_image=pushed.get("merged")
        )
        result_path = self.output_dir / "result.json"
        result = json.loads(result_path.read_text())
        result["images"] = pushed
        result_path.write_text(json.dumps(result, indent=2))
        self.checkpoints.store.write_bytes("result.json", result_path.read_bytes())
        return pushed

    def _base_digest(self) -> str | None:
        """What pins the base model's bytes: the digest of the oci:// image it came from,
        the sha256 of its folder's files (local or s3://), or the Hub commit it loaded."""
        from .model.sources import pulled_digest
        from .publishing.lineage import tree_digest

        local = Path(self.spec.model.name)  # localized by setup(): s3:// and oci:// are here
        if self.source_model.startswith("oci://"):
            return pulled_digest(local)
        if local.is_dir():
            return tree_digest(local)
        config = getattr(self.model, "config", None)
        commit = getattr(config, "_commit_hash", None)
        return str(commit) if commit else None

    def _register(self, *, local: bool, images: dict[str, str]) -> None:
        """The published model as a version in the MLflow Model Registry (logging.mlflow)."""
        if self.saved is None:
            return
        model_dir, metrics = self.saved
        tags = registry_tags(
            self.job.name,
            self.job.metadata.namespace,
            self.spec,
            metrics,
            image=images.get(model_dir.name),
        )  # final/ or merged/
        self.tracker_runs.register_model(
            model_dir, self._published(model_dir), local=local, tags=tags
        )

    def _save_merged(self, adapter_dir: Path) -> Path:
        """Base + adapter merged into plain weights. The base is reloaded unquantized, so a
        QLoRA adapter merges into full-precision weights rather than into 4-bit ones; a base
        saved already quantized (bitsandbytes, the `-bnb-4bit` checkpoints) is dequantized
        first, and the merged model is a plain one in its compute dtype."""
        import peft
        import torch

        model_spec = self.spec.model
        dtype = torch.float32 if model_spec.dtype == "auto" else torch_dtype(model_spec.dtype)
        config = self._model_config()
        base = model_class(config).from_pretrained(
            model_spec.name,
            revision=model_spec.revision,
            dtype=dtype,
            trust_remote_code=model_spec.trust_remote_code,
        )
        prequantized = getattr(base, "hf_quantizer", None) is not None
        if prequantized:
            base = base.dequantize()
        embeddings: Any = base.get_input_embeddings()
        if len(self.tokenizer) > embeddings.weight.shape[0]:
            base.resize_token_embeddings(len(self.tokenizer))
        merged = peft.PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        if model_spec.dtype == "auto":
            # Merged in float32 (no rounding of the small delta), saved in the checkpoint's
            # own dtype: an 8B bf16 base gives a 16 GB merged model, not 32 GB.
            saved = config.dtype
            if isinstance(saved, torch.dtype) and saved.is_floating_point:
                merged = merged.to(saved)
        merged_dir = self.output_dir / "merged"
        # A dequantized base cannot be saved back in its checkpoint's (quantized) layout.
        merged.save_pretrained(str(merged_dir), save_original_format=not prequantized)
        (self.processor or self.tokenizer).save_pretrained(str(merged_dir))
        return merged_dir


def _step_of(checkpoint: Path | None) -> int | None:
    return None if checkpoint is None else parse_step(checkpoint.name)


def _names_a_missing_directory(name: str) -> bool:
    """An explicit path (/, ./, ../, ~) that is not a directory: transformers would take it
    for a hub id and fail with "Repo id must be in the form 'repo_name'...", or try the
    network."""
    explicit = name.startswith("/") or is_relative_path(name)
    return explicit and not Path(name).expanduser().is_dir()
