"""Real fine-tuning of tiny models on CPU: weights move, loss falls, artefacts are saved."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ftapi import parse_job
from ftapi.contract import ENV_TERMINATION_LOG, EXIT_INVALID_INPUT, INVALID_INPUT_MARKER
from fttestkit.builders import make_job
from fttestkit.paths import REPO
from fttrainer.recipe import Recipe
from fttrainer.tiny import save_tiny_model


def _run(model: Path, data: Path, out: Path, **changes: Any) -> tuple[Recipe, Any]:
    job = (
        make_job("recipe")
        .set("model.name", str(model))
        .set("dataset", {"train": {"uri": str(data)}, "format": "qa", "maxSeqLength": 64})
        .set("training", {"maxSteps": 12, "batchSize": 8, "learningRate": 1e-2, "device": "cpu"})
        .set("evaluation.strategy", "no")
        .set("logging.steps", 2)
        .set("resources.gpusPerNode", 0)
        .set("output.uri", str(out / "published"))
    )
    for path, value in changes.items():
        job.set(path.replace("__", "."), value)
    recipe = Recipe(parse_job(job.obj()), out)
    recipe.setup()
    result = recipe.train()
    recipe.save(result)
    return recipe, result


def test_lora_sft_learns_and_saves_a_non_empty_adapter(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    _run(tiny_llama, qa_data, tmp_path)
    losses = [m["loss"] for m in json.loads((tmp_path / "step_metrics.json").read_text())]
    assert len(losses) >= 5
    assert losses[-1] < losses[0]
    adapter = load_file(tmp_path / "final" / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b, "no LoRA B matrices saved"
    assert all(t.abs().sum() > 0 for t in lora_b), "LoRA B starts at zero: training moved it"
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert final["global_step"] == 12
    assert json.loads((tmp_path / "result.json").read_text())["data"]["train"] == 40


@pytest.mark.parametrize(
    ("method", "saved"),
    [
        ({"type": "dora"}, "adapter_model.safetensors"),
        ({"type": "prefix", "prefix": {"numVirtualTokens": 4}}, "adapter_model.safetensors"),
        ({"type": "prompt", "prompt": {"numVirtualTokens": 4}}, "adapter_model.safetensors"),
        ({"type": "full"}, "model.safetensors"),
    ],
    ids=["dora", "prefix", "prompt", "full"],
)
def test_each_method_trains(
    tiny_llama: Path, qa_data: Path, tmp_path: Path, method: dict[str, Any], saved: str
) -> None:
    _, result = _run(tiny_llama, qa_data, tmp_path, method=method, training__maxSteps=4)
    assert result.final_metrics["global_step"] == 4
    assert (tmp_path / "final" / saved).stat().st_size > 0


def test_full_fine_tune_changes_the_weights(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    _run(tiny_llama, qa_data, tmp_path, method={"type": "full"}, training__maxSteps=3)
    before = load_file(tiny_llama / "model.safetensors")
    after = load_file(tmp_path / "final" / "model.safetensors")
    name = next(n for n in before if "q_proj" in n)
    assert not before[name].equal(after[name])


def test_finetune_run_cli_on_the_quickstart_example(tiny_llama: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fttrainer.cli", "run", str(REPO / "examples/quickstart-cpu.yaml"),
         "--set", f"model.name={tiny_llama}", "--set", "training.maxSteps=3",
         "--set", f"output.uri={tmp_path / 'published'}", "--output", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done:" in result.stdout
    assert json.loads((tmp_path / "run" / "result.json").read_text())["method"] == "lora"
    # The untrained model's validation loss is measured first and printed next to the
    # fine-tuned one: training on the quick start's data lowers it.
    before, after = map(
        float, re.search(r"eval_loss: ([\d.]+) before, ([\d.]+) after", result.stdout).groups()
    )  # type: ignore[union-attr]
    assert after < before
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert final["eval_loss/base"] == pytest.approx(before, abs=1e-4)
    # --output moved the local output.uri: the results are in run/ only, not copied.
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "published").exists()


def test_bad_rows_stop_the_run_before_the_model_loads(tiny_llama: Path, tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "q", "answer": "a"}\n{"question": "q"}\n')
    log = tmp_path / "termination-log"  # what the kubelet mounts at /dev/termination-log
    log.touch()
    result = subprocess.run(
        [sys.executable, "-m", "fttrainer.cli", "run", str(REPO / "examples/quickstart-cpu.yaml"),
         "--set", f"model.name={tiny_llama}", "--set", f"dataset.train.uri={data}",
         "--set", "dataset.format=qa", "--output", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, check=False,
        env={**os.environ, ENV_TERMINATION_LOG: str(log)},
    )  # fmt: skip
    # A restart would fail the same way: the distinct exit code, and the reason where the
    # operator reads it (the pod's termination message).
    assert result.returncode == EXIT_INVALID_INPUT
    assert f"{data}:2: column 'answer' is missing" in result.stderr
    assert log.read_text().startswith(INVALID_INPUT_MARKER)
    assert f"{data}:2: column 'answer' is missing" in log.read_text()


def test_dpo_with_lora_trains_on_preference_pairs(tiny_llama: Path, tmp_path: Path) -> None:
    data = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"Say {i}.", "chosen": f"{i}", "rejected": "no"} for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, result = _run(
        tiny_llama, data, tmp_path / "out",
        dataset={"train": {"uri": str(data)}, "format": "preference", "maxSeqLength": 64},
        trainer={"type": "dpo", "dpo": {"beta": 0.1}}, training__maxSteps=4, training__batchSize=4,
    )  # fmt: skip
    assert result.final_metrics["global_step"] == 4
    steps = json.loads((tmp_path / "out" / "step_metrics.json").read_text())
    assert any("rewards/margins" in step for step in steps)
    assert (tmp_path / "out" / "final" / "adapter_model.safetensors").stat().st_size > 0


def test_grpo_with_builtin_and_python_rewards(tiny_llama: Path, tmp_path: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"What is 2+{i}?", "answer": str(2 + i)} for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rewards_file = tmp_path / "my_rewards.py"
    rewards_file.write_text(
        "def brevity(completions, **kw):\n    return [0.1] * len(completions)\n"
    )
    grpo = {
        "numGenerations": 4, "maxCompletionLength": 8,
        "rewards": [
            {"type": "exact_match", "column": "answer"},
            {"type": "regex", "name": "has_digit", "pattern": r"\d", "weight": 0.5},
            {"type": "python", "function": f"{rewards_file}:brevity"},
        ],
    }  # fmt: skip
    _, result = _run(
        tiny_llama, data, tmp_path / "out",
        dataset={"train": {"uri": str(data)}, "format": "prompt_only", "maxSeqLength": 64},
        trainer={"type": "grpo", "grpo": grpo}, training__maxSteps=2, training__batchSize=4,
    )  # fmt: skip
    assert result.final_metrics["global_step"] == 2
    logged = json.loads((tmp_path / "out" / "step_metrics.json").read_text())[0]
    assert {"rewards/exact_match/mean", "rewards/has_digit/mean", "rewards/brevity/mean"} <= set(
        logged
    )
    assert logged["rewards/brevity/mean"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("overlong", "outcome"),
    [("truncate", "3 over maxSeqLength (truncated)"), ("drop", "3 over maxSeqLength (dropped)"),
     ("fail", "longer than maxSeqLength 48 tokens")],
)  # fmt: skip
def test_overlong_policy(tiny_llama: Path, tmp_path: Path, overlong: str, outcome: str) -> None:
    from fttrainer.data.prepare import DataError

    data = tmp_path / "d.jsonl"
    rows = [{"question": f"q{i}", "answer": "a"} for i in range(10)]
    rows += [{"question": f"x{i}", "answer": "word " * 60} for i in range(3)]  # lines 11-13
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = {"train": {"uri": str(data)}, "format": "qa", "maxSeqLength": 48,
               "overlong": overlong}  # fmt: skip
    job = parse_job(
        make_job().set("model.name", str(tiny_llama)).set("dataset", dataset)
        .set("evaluation.strategy", "no").obj()
    )  # fmt: skip
    recipe = Recipe(job, tmp_path / "out")
    if overlong == "fail":
        with pytest.raises(DataError, match=outcome) as caught:
            recipe.setup()
        assert caught.value.problems[0].origin == f"{data}:11"
        return
    recipe.setup()
    assert recipe.token_report is not None
    assert outcome in recipe.token_report.render()
    kept = len(recipe.trainer.train_dataset)
    assert kept == (13 if overlong == "truncate" else 10)


def test_a_cut_off_answer_fails_loudly(tiny_llama: Path, tmp_path: Path) -> None:
    from fttrainer.data.prepare import DataError

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "long " * 80, "answer": "the answer"}) + "\n")
    job = parse_job(
        make_job().set("model.name", str(tiny_llama))
        .set("dataset", {"train": {"uri": str(data)}, "format": "qa", "maxSeqLength": 32})
        .set("evaluation.strategy", "no").obj()
    )  # fmt: skip
    with pytest.raises(DataError, match="no trainable tokens within maxSeqLength 32") as caught:
        Recipe(job, tmp_path / "out").setup()
    assert caught.value.problems[0].origin == f"{data}:1"


def test_qlora_loads_the_base_in_4bit(tiny_llama: Path, qa_data: Path, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    recipe, result = _run(tiny_llama, qa_data, tmp_path, method={"type": "qlora"},
                          training__maxSteps=2)  # fmt: skip
    four_bit = [m for m in recipe.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit, "no 4-bit layers: the base was not quantized"
    assert result.final_metrics["global_step"] == 2
    assert (tmp_path / "final" / "adapter_model.safetensors").stat().st_size > 0


def test_spectrum_trains_only_the_selected_matrices(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    spectrum = {"type": "spectrum", "spectrum": {"topFraction": 0.5}}
    recipe, _ = _run(tiny_llama, qa_data, tmp_path, training__maxSteps=3, method=spectrum)
    trainable = {n for n, p in recipe.model.named_parameters() if p.requires_grad}
    # 2 layers: half of each module type's 2 matrices = one per type (7 types in Llama).
    assert len(trainable) == 7
    before = load_file(tiny_llama / "model.safetensors")
    after = load_file(tmp_path / "final" / "model.safetensors")
    changed = {n for n in before if n in after and not before[n].equal(after[n])}
    assert changed == trainable


def test_adapter_continues_from_existing_weights(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    _run(tiny_llama, qa_data, tmp_path / "first", training__maxSteps=3)
    first = tmp_path / "first" / "final"
    _run(tiny_llama, qa_data, tmp_path / "second", training__maxSteps=3,
         method={"type": "adapter", "adapter": {"uri": str(first)}})  # fmt: skip
    start = load_file(first / "adapter_model.safetensors")
    end = load_file(tmp_path / "second" / "final" / "adapter_model.safetensors")
    assert start.keys() == end.keys()  # same adapter shape (r, targets) as the first run
    assert any(not start[k].equal(end[k]) for k in start)


def test_artefacts_loss_curve_comparison_and_merged_model(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    evaluation = {"strategy": "no", "prompts": ["What is 3 plus 3?"], "maxNewTokens": 5}
    output = {"uri": str(tmp_path), "mergeAdapter": True}
    _run(tiny_llama, qa_data, tmp_path, output=output, evaluation=evaluation)
    assert (tmp_path / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    (row,) = json.loads((tmp_path / "model_comparison.json").read_text())
    assert row["prompt"] == "What is 3 plus 3?" and set(row) == {"prompt", "base", "fine_tuned"}
    result = json.loads((tmp_path / "result.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(result["merged_model"])
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama), str(tmp_path / "final")
    )
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-4)


def test_early_stopping_stops_on_a_plateau(tiny_llama: Path, qa_data: Path, tmp_path: Path) -> None:
    _, result = _run(
        tiny_llama, qa_data, tmp_path,
        dataset={"train": {"uri": str(qa_data)}, "format": "qa", "maxSeqLength": 64,
                 "split": {"train": 0.8, "validation": 0.2}},
        evaluation={"strategy": "steps", "steps": 1},
        training={"maxSteps": 12, "batchSize": 8, "learningRate": 1e-2, "device": "cpu",
                  "earlyStopping": {"patience": 2, "threshold": 100.0}},
    )  # fmt: skip
    # threshold 100: no evaluation after the first counts as better, so it stops at step 3.
    assert result.final_metrics["global_step"] == 3


def test_finetune_run_from_an_env_file_and_flat_flags(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    env = tmp_path / "run.env"
    env.write_text(f"MODEL_NAME={tiny_llama}\nDATA_PATH={qa_data}\nTECHNIQUE=lora\nLORA_R=4\n")
    result = subprocess.run(
        [sys.executable, "-m", "fttrainer.cli", "run", str(env), "--dataset_type", "qa",
         "--epochs", "1", "--batch_size", "8", "--grad_acc_steps", "1",
         "--set", "evaluation.strategy=no",
         "--save_path", str(tmp_path / "published"), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((tmp_path / "out" / "final" / "adapter_config.json").read_text())
    assert saved["r"] == 4
    # The flat style's own default split (80/10/10) keeps 32 of the 40 rows: 4 batches of 8.
    assert json.loads((tmp_path / "out" / "final_metrics.json").read_text())["global_step"] == 4


def test_tokenizer_without_chat_template_gets_chatml(qa_data: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    model = save_tiny_model("gpt2", tmp_path / "gpt2")
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    assert not AutoTokenizer.from_pretrained(model).chat_template
    recipe, result = _run(model, qa_data, tmp_path / "out", training__maxSteps=2)
    assert "<|im_start|>assistant" in recipe.tokenizer.chat_template
    assert result.final_metrics["global_step"] == 2


def test_test_split_is_scored_after_training(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    dataset = {"train": {"uri": str(qa_data)}, "format": "qa", "maxSeqLength": 64,
               "split": {"train": 0.75, "test": 0.25}}  # fmt: skip
    _, result = _run(tiny_llama, qa_data, tmp_path, dataset=dataset, training__maxSteps=2)
    assert result.final_metrics["test_loss"] > 0
    assert json.loads((tmp_path / "result.json").read_text())["data"]["test"] == 10


def test_mcq_accuracy_and_benchmarks_before_and_after(tiny_llama: Path, tmp_path: Path) -> None:
    row = {"question": "Pick one.", "choices": ["red", "green", "blue", "black"], "answer": "C"}
    data, same, other = tmp_path / "mcq.jsonl", tmp_path / "same.jsonl", tmp_path / "other.jsonl"
    data.write_text(
        "".join(json.dumps({**row, "question": f"Q{i}: pick."}) + "\n" for i in range(40))
    )
    same.write_text("".join(json.dumps({**row, "question": f"B{i}?"}) + "\n" for i in range(8)))
    other.write_text(
        "".join(json.dumps({**row, "question": f"B{i}?", "answer": "A"}) + "\n" for i in range(8))
    )
    dataset = {"train": {"uri": str(data)}, "format": "mcq", "maxSeqLength": 64,
               "split": {"train": 0.8, "validation": 0.2}}  # fmt: skip
    benchmarks = [{"name": "same", "uri": str(same)}, {"name": "other", "uri": str(other)}]
    evaluation = {"strategy": "epoch", "metrics": ["loss", "accuracy"], "benchmarks": benchmarks}
    _, result = _run(tiny_llama, data, tmp_path / "out", dataset=dataset, evaluation=evaluation,
                     training__maxSteps=30)  # fmt: skip
    metrics = result.final_metrics
    assert metrics["eval_accuracy"] == 1.0  # the answer is always C: trained, it says C
    assert (metrics["benchmark/same"], metrics["benchmark/other"]) == (1.0, 0.0)
    assert 0.0 <= metrics["benchmark/same/base"] <= 1.0
    assert metrics["benchmark/same/base"] + metrics["benchmark/other/base"] <= 1.0


def test_qa_exact_match_after_training(tiny_llama: Path, tmp_path: Path) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"Is {i} a number?", "answer": "yes"}) + "\n"
                            for i in range(40)))  # fmt: skip
    dataset = {"train": {"uri": str(data)}, "format": "qa", "maxSeqLength": 64,
               "split": {"train": 0.8, "validation": 0.2}}  # fmt: skip
    evaluation = {"strategy": "epoch", "metrics": ["loss", "exact_match"], "maxNewTokens": 4}
    _, result = _run(tiny_llama, data, tmp_path / "out", dataset=dataset, evaluation=evaluation,
                     training__maxSteps=40)  # fmt: skip
    assert result.final_metrics["eval_exact_match"] == 1.0


@pytest.mark.parametrize(
    ("path", "value"),
    [("output.finalModel", "best"),
     ("dataset", {"train": {"uri": "d.jsonl"}, "format": "preference", "addEos": True})],
)  # fmt: skip
def test_unimplemented_fields_are_refused_not_ignored(path: str, value: Any) -> None:
    manifest = make_job().set(path, value)
    if path == "dataset":
        manifest.set("trainer.type", "dpo")
    job = parse_job(manifest.obj())
    with pytest.raises(ValueError, match="not implemented yet in the trainer"):
        Recipe(job, Path("/nonexistent"))


@pytest.mark.parametrize("responses_only", [True, False])
def test_the_trainer_gets_our_tokens_with_the_loss_on_answers_only(
    tiny_llama: Path, tmp_path: Path, responses_only: bool
) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"question": "What colour is the sky?", "answer": "Blue."}) + "\n")
    dataset = {"train": {"uri": str(data)}, "format": "qa", "maxSeqLength": 64,
               "trainOnResponsesOnly": responses_only}  # fmt: skip
    job = parse_job(make_job().set("model.name", str(tiny_llama)).set("dataset", dataset)
                    .set("evaluation.strategy", "no").obj())  # fmt: skip
    recipe = Recipe(job, tmp_path / "out")
    recipe.setup()
    (example,) = recipe.trainer.train_dataset
    trained = [t for t in example["labels"] if t != -100]
    if responses_only:
        assert recipe.tokenizer.decode(trained) == "Blue.<|im_end|>"
    else:
        assert trained == example["input_ids"]


def test_a_restart_after_the_final_checkpoint_trains_no_further(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    """Killed after the last checkpoint but before publishing: the restart resumes from it
    and trains nothing more (transformers alone would run step max_steps+1 each time)."""
    from safetensors.torch import load_file

    published = {"output.uri": str(tmp_path / "published"), "output.saveSteps": 2}
    _run(tiny_llama, qa_data, tmp_path / "first", training__maxSteps=4, **published)
    recipe, _ = _run(tiny_llama, qa_data, tmp_path / "again", training__maxSteps=4, **published)
    assert recipe.resumed_from is not None and recipe.resumed_from.name == "checkpoint-4"

    def steps(run: str) -> list[int]:
        return [m["step"] for m in json.loads((tmp_path / run / "step_metrics.json").read_text())]

    assert steps("again") == steps("first") and steps("again")[-1] == 4
    final = json.loads((tmp_path / "again" / "final_metrics.json").read_text())
    assert final["global_step"] == 4 and final["train_loss"] > 0
    first = load_file(tmp_path / "first" / "final" / "adapter_model.safetensors")
    again = load_file(tmp_path / "again" / "final" / "adapter_model.safetensors")
    assert first.keys() == again.keys()
    assert all(first[name].equal(again[name]) for name in first)


@pytest.mark.parametrize(
    "name", ["/nonexistent/model", "./not-here", "~/not-here-either", ".quickstart/not-here"]
)
def test_a_model_path_that_does_not_exist_is_named_before_anything_loads(
    qa_data: Path, tmp_path: Path, name: str
) -> None:
    """transformers would take the path for a hub id ("Repo id must be in the form...")."""
    job = (
        make_job()
        .set("model.name", name)
        .set("dataset", {"train": {"uri": str(qa_data)}, "format": "qa"})
    )
    recipe = Recipe(parse_job(job.obj()), tmp_path)
    with pytest.raises(ValueError, match=f"spec.model.name: '{re.escape(name)}': no such dir"):
        recipe.setup()
