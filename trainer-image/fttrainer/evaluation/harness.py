"""lm-evaluation-harness tasks on the model in memory (spec.evaluation.harness).

The harness gets the very model the trainer holds (a PEFT model scores with its adapter
active) through lm-eval's `HFLM(pretrained=<model instance>)`: no second copy is loaded and
nothing is saved first. Given an instance, lm-eval runs single-process on each rank, as the
other task scores do. Tasks come from lm-eval's registry or from YAML files in
`includePath` (a local directory, or an s3:// prefix downloaded first); relative
`data_files` paths in those YAMLs resolve against that directory, so a task directory
carries its own data (`dataset_path: json`) and needs no network.

    harness/<task>/<metric>   e.g. harness/arc_easy/acc, harness/arc_easy/acc_stderr
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any

from ftapi.v1alpha1.evaluation import HarnessSpec

from .generation import inference

log = logging.getLogger("fttrainer")
DEFAULT_FILTER = "none"  # lm-eval's name for "no filter": left out of our metric names


def run_harness(
    model: Any,
    tokenizer: Any,
    harness: HarnessSpec,
    *,
    task_dir: Path | None,
    batch_size: int,
    seed: int,
) -> dict[str, float]:
    """Run the harness tasks on `model`; flat `harness/<task>/<metric>` scores."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=str(task_dir) if task_dir else None)
    chdir = contextlib.chdir(task_dir) if task_dir else contextlib.nullcontext()
    with inference(model), chdir:
        results = lm_eval.simple_evaluate(
            model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size),
            tasks=list(harness.tasks),
            num_fewshot=harness.num_fewshot,
            limit=harness.limit,
            apply_chat_template=harness.chat_template,
            task_manager=task_manager,
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    if results is None:  # lm-eval returns None on ranks other than its rank 0
        return {}
    return flatten_results(results["results"])


def check_tasks(harness: HarnessSpec, *, task_dir: Path | None) -> None:
    """Refuse task names lm-eval cannot resolve (its registry plus `includePath`) before
    the model is loaded: a typo would otherwise fail the run after training, and every
    restart would train again. Indexing the registry takes seconds."""
    import difflib

    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir) if task_dir else None)
    unknown = [task for task in harness.tasks if not manager.match_tasks([task])]
    if unknown:
        hints = []
        for task in unknown:
            close = difflib.get_close_matches(task, manager.all_tasks, n=3, cutoff=0.75)
            hints.append(f"{task!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ValueError(
            f"spec.evaluation.harness.tasks: lm-eval knows no task {', '.join(hints)}"
            + ("" if task_dir else "; tasks of your own need harness.includePath")
        )


def flatten_results(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """lm-eval's {task: {"acc,none": 0.5, "alias": ...}} -> {"harness/task/acc": 0.5}.

    The filter name is kept only when it is not the default (`exact_match,strict-match` ->
    `exact_match_strict-match`); non-numbers (aliases, "N/A" stderr) are left out."""
    flat: dict[str, float] = {}
    for task, scores in results.items():
        for key, value in scores.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or isinstance(value, bool):
                continue  # "alias", "name", "sample_len": not metric,filter pairs
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isnan(number):
                continue
            name = metric if filter_name == DEFAULT_FILTER else f"{metric}_{filter_name}"
            flat[f"harness/{task}/{name}"] = number
    return flat


def fetch_task_dir(include_path: str, scratch: Path, *, s3: Any = None) -> Path:
    """The task directory on local disk: as given, or downloaded from s3:// into scratch."""
    if not include_path.startswith("s3://"):
        path = Path(include_path)
        if not path.is_dir():
            raise FileNotFoundError(f"evaluation.harness.includePath {include_path}: no directory")
        return path.resolve()
    from fttrainer.storage import open_store

    target = scratch / "harness_tasks"
    files = open_store(include_path, s3=s3).download_dir("", target)
    if not files:
        raise FileNotFoundError(f"evaluation.harness.includePath {include_path}: no files")
    log.info("harness: %d task files from %s", len(files), include_path)
    return target
