"""The `finetune` command line.

    finetune validate examples/lora-gpu.yaml     # check a config and its local data; 1 on errors
    finetune run examples/quickstart-cpu.yaml    # fine-tune locally
    finetune run job.yaml --set training.epochs=2 --output results/try
    finetune plan examples/qlora-7b-16gb.yaml --gpu-memory 16
    finetune convert my_config.env -o job.yaml   # any config style -> a FineTuneJob manifest
    finetune formats                             # the dataset formats, each with an example

Every command reads any of the config styles users bring (fttrainer/configs): a FineTuneJob
manifest, a .env file or the flat flags (`--model_name ./m --data_path d.jsonl ...`), a TOML
file with [fine_tuner], a nested YAML config (`--training.learning_rate 1e-4` overrides it),
or the Hydra-style flags (`--model ./m --dataset d.jsonl --trainer SFT ...`).

Heavy libraries (torch, transformers) are imported inside the commands that need them, so
`finetune validate` and `--help` stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

FILE_HELP = (
    "the config: a FineTuneJob manifest, a .env file, a TOML [fine_tuner] file or a nested "
    "YAML config (the style is detected); flat or Hydra-style flags may replace it"
)
FLAT_PREFIX, HYDRA_PREFIX = "flat:", "hydra:"


def build_parser() -> argparse.ArgumentParser:
    from .configs import STYLES

    parser = argparse.ArgumentParser(
        prog="finetune",
        description="Fine-tune LLMs from FineTuneJob manifests (finetune.dev/v1alpha1) or "
        "the configs of the tools you come from.",
        epilog="config styles read:\n"
        + "\n".join(f"  {name}: {how}" for name, how in STYLES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    validate = config_command(
        commands,
        "validate",
        _validate,
        "check a config against the API (same rules as the API server) and read its data",
        "Check a config; print every problem with its field path (and the key you wrote).",
    )
    validate.add_argument(
        "--spec-only",
        action="store_true",
        help="check the config but do not read the data or the model's config",
    )
    run = config_command(
        commands,
        "run",
        _run,
        "fine-tune locally, exactly as the config says",
        "Run the training part of a FineTuneJob on this machine (CPU, or a GPU).",
    )
    run.add_argument(
        "--output",
        type=Path,
        help="where the results go (default: the config's output, e.g. spec.output.uri)",
    )
    plan = config_command(
        commands,
        "plan",
        _plan,
        "show the resolved config, the data statistics and GPU memory per device",
        "Resolve defaults, check the data, and estimate GPU memory per device "
        "(suggesting settings that fit --gpu-memory).",
    )
    plan.add_argument(
        "--gpu-memory",
        type=float,
        default=80.0,
        metavar="GIB",
        help="GPU memory to fit, in GiB (default 80: an A100/H100 80GB)",
    )
    convert = config_command(
        commands,
        "convert",
        _convert,
        "write the FineTuneJob manifest equivalent to a config (for kubectl apply)",
        "Translate a config of any style into a FineTuneJob manifest; keys with no place "
        "in a FineTuneJob become comments.",
    )
    convert.add_argument(
        "-o", "--output", type=Path, help="write the manifest here (default: standard output)"
    )
    formats = commands.add_parser(
        "formats",
        help="show each dataset format with a one-row example and its rendering",
        description="Every dataset.format, with an example row and what it becomes.",
    )
    formats.set_defaults(handler=_formats)
    add_plugin_commands(commands)
    return parser


PLUGIN_GROUP = "finetune.commands"


def add_plugin_commands(commands: Any) -> None:
    """The commands other installed packages add (entry points in PLUGIN_GROUP, each a
    function taking the subparsers): the cluster client's submit, status, logs, ... when
    finetune-client is installed. The trainer image has none, and imports no cluster client."""
    from importlib.metadata import entry_points

    for entry in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        entry.load()(commands)


def config_command(
    commands: Any, name: str, handler: Any, summary: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand taking a config (file and/or style flags) and --set overrides (also for
    the commands other packages add: `finetune submit`)."""
    from .configs import flat, hydra

    command: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=description, allow_abbrev=False
    )
    command.add_argument("file", type=Path, nargs="?", help=FILE_HELP)
    command.add_argument(
        "--config", type=Path, metavar="FILE", help="the config file (instead of FILE)"
    )
    command.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a FineTuneJob field, e.g. --set training.epochs=2 (repeatable)",
    )
    group = command.add_argument_group(
        "flat style (the CLI tool's flags; in a .env file: MODEL_NAME=...)"
    )
    for key, (_, text) in {**flat.KEYS, **flat.ENV_ONLY}.items():
        if key != "config":
            group.add_argument(
                flat.flag(key),
                dest=FLAT_PREFIX + key,
                metavar="V",
                default=argparse.SUPPRESS,
                help=text,
            )
    group = command.add_argument_group("Hydra-style flags (the TRL training script's)")
    for key, (_, text) in hydra.KEYS.items():
        group.add_argument(
            hydra.flag(key),
            dest=HYDRA_PREFIX + key,
            metavar="V",
            default=argparse.SUPPRESS,
            help=text,
        )
    command.add_argument_group(
        "nested YAML style",
        "--section.key VALUE overrides a key of the YAML config, e.g. "
        "--training.learning_rate 1e-4",
    )
    command.set_defaults(handler=handler)
    return command


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    return int(args.handler(args))


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The command, FILE (or --config FILE), --set overrides and the style flags
    (`args.flags`) of a command line; exits with usage on errors, as argparse does."""
    from .configs import StyleFlags

    parser = build_parser()
    # The Hydra guide prints `---max-seq-length`: read it as the flag it means.
    tokens = ["--" + token[3:] if token.startswith("---") else token for token in argv]
    try:
        tokens, dotted = split_dotted(tokens)
    except ValueError as exc:
        parser.error(str(exc))
    args, unknown = parser.parse_known_args(tokens)
    if unknown:
        parser.error(unknown_flags_message(parser, unknown))
    values = vars(args)

    def taken(prefix: str) -> dict[str, str]:
        return {k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}

    args.flags = StyleFlags(flat=taken(FLAT_PREFIX), hydra=taken(HYDRA_PREFIX), dotted=dotted)
    if getattr(args, "config", None) is not None:
        if args.file is not None:
            parser.error("give the config once: FILE or --config FILE")
        args.file = args.config
    return args


def split_dotted(tokens: list[str]) -> tuple[list[str], dict[str, str]]:
    """Take the nested YAML style's `--section.key value` overrides out of the arguments."""
    rest: list[str] = []
    dotted: dict[str, str] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        name, sep, value = token[2:].partition("=")
        if token.startswith("--") and "." in name and not name[:1].isdigit():
            if not sep:
                if index + 1 >= len(tokens):
                    raise ValueError(f"--{name} needs a value")
                index += 1
                value = tokens[index]
            dotted[name] = value
        else:
            rest.append(token)
        index += 1
    return rest, dotted


def unknown_flags_message(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    """'unrecognized arguments: --lora_rank (did you mean --lora_r?)' over every style."""
    known = sorted(_option_strings(parser))
    parts = []
    for token in unknown:
        if not token.startswith("-"):
            parts.append(token)
            continue
        name = token.split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        parts.append(f"{name}{hint}")
    return "unrecognized arguments: " + ", ".join(parts)


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    options: set[str] = set()
    for action in parser._actions:
        options.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options |= _option_strings(sub)
    return options


def _translate(args: argparse.Namespace) -> Any:
    """The config read in its style, notes printed; None (after printing why) when it
    cannot be read."""
    from .configs import ConfigError, load_config

    try:
        translation = load_config(args.file, args.flags)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
    except OSError as exc:  # the file, or one it includes (CONFIG=base.env)
        print(f"{exc.filename or args.file}: {exc.strerror}", file=sys.stderr)
        return None
    print(f"read {translation.source} as: {translation.style}", file=sys.stderr)
    for note in translation.notes:
        if note.level != "error":
            print(f"  {note}", file=sys.stderr)
    try:
        translation.raise_errors()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
    return translation


class Loaded(NamedTuple):
    job: Any  # ftapi.FineTuneJob
    translation: Any  # configs.Translation
    manifest: dict[str, Any]  # as translated, --set applied (not every default spelled out)


def _load(args: argparse.Namespace, *, output: Any = None) -> Loaded | None:
    """The validated FineTuneJob of the config with --set applied (and, for `run`, its
    output location); prints the errors, naming the user's own keys, and returns None when
    it is not valid. `output(manifest, translation)` may move the output before validation."""
    from ftapi import InvalidSpecError, parse_job
    from ftapi.contract import release
    from ftapi.skew import contract_refusal, older_reader_hint

    from .overrides import OverrideError, apply_overrides

    translation = _translate(args)
    if translation is None:
        return None
    try:
        manifest = apply_overrides(translation.manifest, args.overrides)
    except OverrideError as exc:
        print(exc, file=sys.stderr)
        return None
    if output is not None:
        output(manifest, translation)
    os.environ.update(translation.environment)
    try:
        refusal = contract_refusal(manifest, release("finetune-trainer"))
        if refusal is not None:
            raise InvalidSpecError([refusal], translation.source)
        try:
            job = parse_job(manifest, translation.source)
        except InvalidSpecError as exc:
            # A style's own default (the flat style's evaluation every 100 steps) never
            # blocks what the user set with --set (evaluation.strategy=no): drop it, retry.
            overridden = {a.partition("=")[0].removeprefix("spec.") for a in args.overrides}
            dropped = conflicting_defaults(translation.origin, exc.errors, overridden)
            if not dropped or not overridden:
                raise  # without --set, the errors are the config's own: report them
            for path in dropped:
                _remove(manifest["spec"], path)
                print(
                    f"  info: {path}: the style's default dropped (it conflicts with --set)",
                    file=sys.stderr,
                )
            job = parse_job(manifest, translation.source)
    except InvalidSpecError as exc:
        print(f"{translation.source}: invalid FineTuneJob", file=sys.stderr)
        for error in exc.errors:
            blamed = translation.blame(error.path.removeprefix("spec."))
            print(f"  {error}" + (f" (from {blamed})" if blamed else ""), file=sys.stderr)
        hint = older_reader_hint(manifest, exc.errors, release("finetune-trainer"))
        if hint:
            print(f"  {hint}", file=sys.stderr)
        return None
    return Loaded(job, translation, manifest)


def conflicting_defaults(
    origin: dict[str, str], errors: Sequence[Any], overridden: set[str]
) -> list[str]:
    """Fields a config style filled in by default (not the user) that sit next to a field
    an API error names, and that --set did not set."""
    found = []
    for error in errors:
        path = str(error.path).removeprefix("spec.")
        parent = path.rsplit(".", 1)[0]
        for field_path, key in origin.items():
            if not key.startswith("default") or field_path in overridden:
                continue
            if field_path.rsplit(".", 1)[0] == parent or field_path.startswith(path + "."):
                found.append(field_path)
    return sorted(set(found))


def _remove(spec: dict[str, Any], path: str) -> None:
    node: Any = spec
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
        node.pop(leaf, None)


def _validate(args: argparse.Namespace) -> int:
    return 0 if checked(args) is not None else 1


def checked(args: argparse.Namespace) -> Loaded | None:
    """`finetune validate` as a function (what it prints, it prints): the loaded job when the
    config, its distributed settings and (unless --spec-only) the model's config (where it
    is here) and the data (unless remote) are valid.
    `finetune submit` calls it before anything leaves the machine."""
    loaded = _load(args)
    if loaded is None:
        return None
    job = loaded.job
    spec = job.spec
    print(
        f"{loaded.translation.source}: valid FineTuneJob {job.name!r} "
        f"({spec.trainer.type} + {spec.method.type} on {spec.model.name})"
    )
    if _check_distributed(spec):
        return None
    if getattr(args, "spec_only", False):
        return loaded
    data_valid = _validate_data(spec) == 0
    model_valid = _check_model(spec) == 0
    return loaded if data_valid and model_valid else None


def _check_distributed(spec: Any) -> int:
    """What the trainer checks as a run starts (FSDP needs GPUs, DeepSpeed's own parser over
    the merged config), for the pods' hardware: GPUs when the spec gives them some."""
    from .arguments import check_strategy

    device = spec.training.device
    cuda = device == "cuda" or (device == "auto" and spec.resources.gpus_per_node > 0)
    try:
        check_strategy(spec, cuda=cuda, bf16_supported=cuda)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def _check_model(spec: Any) -> int:
    """What the trainer reads from the model's config before its weights (its kind, what
    the adapter adapts, a method it cannot serve), where the config is here: a folder or
    the hub cache (an s3:// or uncached hub model is read when the run starts)."""
    from .model.adapters import plan_model
    from .model.meta import meta_model

    model = spec.model
    if model.name.startswith("s3://"):
        return 0
    try:
        meta = meta_model(
            model.name,
            revision=model.revision,
            trust_remote_code=model.trust_remote_code,
            local_only=True,
        )
    except Exception as exc:  # not cached, an unknown architecture, remote code refused
        print(f"model: not read here ({type(exc).__name__}); checked when the run starts")
        return 0
    plan = plan_model(meta, spec)
    print(f"model: {plan.kind}")
    if plan.targets is not None:
        print(plan.targets.render())
    for reason in plan.refused:
        print(f"spec.method: {reason}", file=sys.stderr)
    return 1 if plan.refused else 0


class _Ended(Exception):
    """A step of `finetune run` ended it: the process exits with `code`, the reason printed
    (and, for the operator, recorded in the termination log)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _run(args: argparse.Namespace) -> int:
    """`finetune run`: load -> build -> train -> save -> publish -> report, each a step
    below; one that ends the run early raises _Ended with the exit code."""
    try:
        job, output = _load_job(args)
        recipe = _build(job, output)
        result = _train(recipe)
        final_dir = recipe.save(result)
        published = _publish(recipe, job, output)
        return _report(recipe, job, result, final_dir, published)
    except _Ended as ended:
        return ended.code


def _load_job(args: argparse.Namespace) -> tuple[Any, Path]:
    """The job, validated (any config style), and the local directory of its results."""
    from .termination import invalid_input

    chosen: dict[str, Path] = {}

    def place_output(manifest: dict[str, Any], translation: Any) -> None:
        """One copy of the results: a local output.uri is the run directory itself (the
        style's own layout, e.g. results/<project>/<model>/<time>, or --output); a remote
        one gets a local scratch directory that is published to it."""
        output = manifest.setdefault("spec", {}).setdefault("output", {})
        uri = translation.run_directory or output.get("uri")
        if args.output is not None and (uri is None or not is_remote(uri)):
            uri = str(args.output)
        if uri is not None:
            output["uri"] = uri
        name = manifest.get("metadata", {}).get("name", "finetune")
        if uri is not None and not is_remote(uri):
            chosen["dir"] = Path(uri)
        else:
            chosen["dir"] = args.output or Path("results") / name / time.strftime("%Y%m%d_%H%M%S")

    complaints = _Tee(sys.stderr)
    with contextlib.redirect_stderr(complaints):
        loaded = _load(args, output=place_output)
    if loaded is None:
        raise _Ended(invalid_input(complaints.getvalue()))
    job = loaded.job
    if job.spec.model.hub_endpoint:  # before huggingface_hub and datasets read it, at import
        from ftapi.constants import ENV_HUB_ENDPOINT

        os.environ[ENV_HUB_ENDPOINT] = job.spec.model.hub_endpoint
    return job, chosen["dir"]


def _build(job: Any, output: Path) -> Any:
    """The Recipe, set up: model, data and trainer, checked before any step is trained.
    The watchdog starts first, before the heavy imports: a process that hangs importing,
    initialising CUDA or joining the other ranks is stopped at startupSeconds too, and
    says where."""
    import logging

    from .supervision.faults import Faults
    from .supervision.watchdog import Watchdog
    from .termination import invalid_input

    watchdog = Watchdog(job.spec.run_policy.stall_detection).start()
    watchdog.note("importing torch and the training libraries")
    Faults.from_env().before_imports()  # a test's hang or freeze there
    import torch

    from .data.prepare import DataError
    from .publishing.hub import HubError
    from .quiet import quiet_libraries
    from .recipe import Recipe

    quiet_libraries(progress_bars=sys.stderr.isatty(), cuda=torch.cuda.is_available())
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if job.spec.distributed.strategy in ("deepspeed", "fsdp"):
        os.environ.update(single_process_rendezvous(os.environ))
    output.mkdir(parents=True, exist_ok=True)
    try:
        watchdog.note("checking the job")
        recipe = Recipe(job, output, progress_bar=sys.stderr.isatty(), watchdog=watchdog)
        recipe.setup()
    except (DataError, ValueError, HubError) as exc:
        print(exc, file=sys.stderr)
        raise _Ended(invalid_input(str(exc))) from exc
    return recipe


def _train(recipe: Any) -> Any:
    """Train; a stop (a signal: resumed by the next run), a divergence or a rollback ends
    the run with the code the operator reads."""
    from ftapi.contract import DIVERGED, EXIT_STOPPED, ROLLED_BACK

    from .callbacks import Stopped
    from .supervision.divergence import Diverged, RollBack
    from .termination import record

    try:
        return recipe.train()
    except Stopped as stopped:
        print(f"{stopped}: a new run of this job resumes from it", file=sys.stderr)
        raise _Ended(EXIT_STOPPED) from stopped
    except Diverged as exc:
        print(f"diverged: {exc}", file=sys.stderr)
        raise _Ended(record(DIVERGED, str(exc))) from exc
    except RollBack as exc:
        print(f"rolled back: {exc}: run it again (the same command) to resume", file=sys.stderr)
        raise _Ended(record(ROLLED_BACK, str(exc))) from exc


def _publish(recipe: Any, job: Any, output: Path) -> list[str]:
    """Publish the saved results (output.uri, the Hub, OCI); what was published. A refusal
    for good is recorded (PublishFailed); anything else leaves them to the next run."""
    from ftapi.contract import PUBLISH_FAILED

    from .publishing.hub import HubError
    from .publishing.oci import OciError
    from .storage import StorageError
    from .termination import record

    try:
        published: list[str] = recipe.publish()
    except StorageError as exc:
        print(f"training finished but the results could not be published: {exc}", file=sys.stderr)
        print(f"they are still in {output}", file=sys.stderr)
        raise _Ended(1) from exc
    except (HubError, OciError) as exc:  # output.pushToHub, output.oci
        where = f"{job.spec.output.uri.rstrip('/')}/final"
        print(f"training finished, the model is in {where}, but {exc}", file=sys.stderr)
        if exc.permanent:  # a restart would be refused the same way
            raise _Ended(record(PUBLISH_FAILED, f"{exc}; the model is in {where}")) from exc
        print("a new run of this job publishes again without training", file=sys.stderr)
        raise _Ended(1) from exc
    recipe.ranks.finish()  # this rank's part is over: its silence from now on is no stall
    return published


def _report(recipe: Any, job: Any, result: Any, final_dir: Path, published: list[str]) -> int:
    """What the run did, on the main process: the metrics before and after, and whether
    the model came out worse than the base (a failure when failIfWorseThanBase)."""
    from ftapi.contract import WORSE_THAN_BASE, worse_than_base

    from .termination import record

    if not recipe.is_main_process:
        return 0
    if published:
        print(f"published {len(published)} files to {job.spec.output.uri}")
    for line in before_after(result.final_metrics):
        print(line)
    final = result.final_metrics
    worse = worse_than_base(_number(final.get("eval_loss/base")), _number(final.get("eval_loss")))
    if worse is not None:
        print(f"warning: {worse}", file=sys.stderr)
        if job.spec.evaluation.fail_if_worse_than_base:
            where = f"{job.spec.output.uri.rstrip('/')}/final"
            return record(WORSE_THAN_BASE, f"{worse}; the model is in {where}")
    print(f"done: {final_dir} (train loss {final['train_loss']:.4f})")
    return 0


class _Tee(io.StringIO):
    """Keeps what is written while passing it on (the errors `_load` prints)."""

    def __init__(self, passthrough: Any) -> None:
        super().__init__()
        self.passthrough = passthrough

    def write(self, text: str) -> int:
        self.passthrough.write(text)
        return super().write(text)


def single_process_rendezvous(environ: Any) -> dict[str, str]:
    """torch.distributed settings for a DeepSpeed/FSDP run started without torchrun (one
    local process): without them DeepSpeed looks for MPI. Nothing when torchrun set them."""
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return {}
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def is_remote(uri: str) -> bool:
    return "://" in uri


def before_after(metrics: dict[str, Any]) -> list[str]:
    """'eval_loss: 5.64 before, 5.51 after' for every metric measured on both the base and
    the fine-tuned weights."""
    lines = []
    for key, before in metrics.items():
        name = key.removesuffix("/base")
        after = metrics.get(name)
        if name != key and isinstance(before, (int, float)) and isinstance(after, (int, float)):
            lines.append(f"{name}: {before:.4f} before, {after:.4f} after")
    return lines


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _plan(args: argparse.Namespace) -> int:
    import yaml

    loaded = _load(args)
    if loaded is None:
        return 1
    job = loaded.job
    spec = job.spec
    split = spec.effective_split()
    resolved = {
        **job.to_dict()["spec"],
        "resolved": {
            "learningRate": spec.effective_learning_rate(),
            "split": {"train": split.train, "validation": split.validation, "test": split.test},
            "processes": spec.processes(),
        },
    }
    print("resolved spec:")
    print(yaml.safe_dump(resolved, sort_keys=False).rstrip())
    # Bad rows: the plan still prints, the exit is 1.
    data_status = _validate_data(spec, image_tokens=True)
    from .model.memory_plan import (
        GIB,
        ModelShape,
        estimate_memory,
        recomputed_layers_to_fit,
        suggest,
    )

    try:
        shape = ModelShape.from_pretrained(
            spec.model.name, trust_remote_code=spec.model.trust_remote_code
        )
    except Exception as exc:  # hub unreachable, unknown architecture...
        print(f"memory estimate skipped: cannot read the config of {spec.model.name} ({exc})")
        return data_status
    estimate = estimate_memory(shape, spec)
    print(estimate.render())
    budget = args.gpu_memory * GIB
    if estimate.total > budget:
        print(f"does not fit {args.gpu_memory:g} GiB; try, in this order:")
        for change in suggest(shape, spec, budget):
            print(f"  --set {change}")
    else:
        print(f"fits {args.gpu_memory:g} GiB per device")
    if spec.training.gradient_checkpointing is None and spec.method.type != "prefix":
        layers, needed = recomputed_layers_to_fit(shape, spec, budget)
        print(
            f"gradientCheckpointing unset: on {args.gpu_memory:g} GiB a GPU run recomputes "
            f"{layers} of {shape.layers} layers ({needed / GIB:.1f} GiB)"
        )
    return data_status


def _convert(args: argparse.Namespace) -> int:
    """The manifest as the translation built it (not every default spelled out, so it stays
    readable), checked against the API first; notes become comments."""
    loaded = _load(args)
    if loaded is None:
        return 1
    from .configs.render import render_manifest

    # What was validated: --set applied, and the style's defaults it conflicted with gone.
    text = render_manifest(loaded.manifest, loaded.translation)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"wrote {args.output}: kubectl apply -f {args.output}", file=sys.stderr)
    return 0


def _formats(args: argparse.Namespace) -> int:
    from .data.catalog import render_formats

    print(render_formats())
    return 0


def _validate_data(spec: Any, *, image_tokens: bool = False) -> int:
    """Prepare local data and print its report (bad rows: 1). `image_tokens`: also what
    the images cost in tokens, when the model's processor is here (finetune plan)."""
    sources = [s for s in (spec.dataset.train, spec.dataset.validation, spec.dataset.test) if s]
    remote = [s.uri for s in sources if "://" in s.uri]
    if remote:
        print(f"data not checked (remote: {', '.join(remote)})")
        return 0
    from .data.prepare import DataError, prepare_data, refuse_images
    from .model.vision import reads_images

    try:
        prepared = prepare_data(spec)
        if reads_images(spec.model) is False:  # unknown: a model this machine cannot read
            refuse_images(prepared, spec.dataset.train.uri, spec.model.name)
    except DataError as exc:
        if exc.report is not None:
            print(exc.report.render())
        print(exc, file=sys.stderr)
        return 1
    print(prepared.report.render())
    if image_tokens and prepared.image_digests():
        print(_image_token_line(spec, prepared))
    return 0


def _image_token_line(spec: Any, prepared: Any) -> str:
    """What each image of the data adds to its sample, as the model's processor expands
    it at vision.maxImagePixels (the token check counts the same)."""
    from transformers import AutoProcessor

    from .data.image_tokens import image_costs, stored_sizes

    model = spec.model
    try:
        processor = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            model.tokenizer or model.name,
            revision=model.revision,
            trust_remote_code=model.trust_remote_code,
            local_files_only=True,
        )
    except (OSError, ValueError) as exc:
        return f"image tokens: not counted (no processor here: {type(exc).__name__})"
    sizes = stored_sizes(prepared.image_digests(), prepared.image_path)
    costs = image_costs(processor, sizes, spec.vision.max_image_pixels)
    each = sorted(costs.per_image.values())
    bound = spec.vision.max_image_pixels
    return (
        f"image tokens: each image adds {each[0]}..{each[-1]} tokens "
        f"(median {each[len(each) // 2]}) to its sample"
        + (f", pictures read at most {bound:,} pixels" if bound else "")
        + "; maxSeqLength counts them"
    )


if __name__ == "__main__":
    raise SystemExit(main())
