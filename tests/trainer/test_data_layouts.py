"""Every data layout of the format catalogue (fttrainer/data/catalog.py, what `finetune
formats` shows) really trains a tiny model: SFT layouts with SFT, preference layouts with
DPO, prompt-only rows with GRPO. Tool calls reach the loss; preference layouts give DPO the
same pair; templates that lose tools fail naming themselves."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from ftapi import parse_job
from fttestkit.builders import make_job
from fttrainer.data.catalog import LAYOUTS, Layout, trained_parts
from fttrainer.data.prepare import DataError
from fttrainer.recipe import Recipe
from fttrainer.templates import CHAT_TEMPLATE

TRAINERS = {
    "preference": {"type": "dpo"},
    "prompt_only": {
        "type": "grpo",
        "grpo": {
            "numGenerations": 2,
            "maxCompletionLength": 8,
            "rewards": [{"type": "regex", "pattern": r"\d"}],
        },
    },
}
CALL_JSON = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def _layout(name: str) -> Layout:
    return next(x for x in LAYOUTS if x.name == name)


def _recipe(
    model: Path,
    fmt: str,
    rows: list[dict[str, Any]],
    out: Path,
    *,
    steps: int = 2,
    **dataset: Any,
) -> Recipe:
    data = out / "data.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = {"train": {"uri": str(data)}, "format": fmt, "maxSeqLength": 2048, **dataset}
    job = (
        make_job("layouts")
        .set("model.name", str(model))
        .set("dataset", spec)
        .set("training", {"maxSteps": steps, "batchSize": 2, "learningRate": 1e-2, "device": "cpu"})
        .set("evaluation.strategy", "no")
        .set("logging.steps", 1)
        .set("resources.gpusPerNode", 0)
        .set("output.uri", str(out / "published"))
    )
    if fmt in TRAINERS:
        job.set("trainer", TRAINERS[fmt])
    return Recipe(parse_job(job.obj()), out)


def _labelled_text(recipe: Recipe, index: int = 0) -> str:
    assert recipe.token_report is not None
    encoded = recipe.token_report.encoded["train"][index]
    return str(recipe.tokenizer.decode([t for t in encoded["labels"] if t != -100]))


@pytest.mark.parametrize("layout", LAYOUTS, ids=[f"{x.format}: {x.name}" for x in LAYOUTS])
def test_each_layout_trains(layout: Layout, tiny_llama: Path, tmp_path: Path) -> None:
    """...and for SFT, the tokens it trains on are what `finetune formats` says."""
    recipe = _recipe(tiny_llama, layout.format, [layout.row] * 8, tmp_path)
    recipe.setup()
    if recipe.spec.trainer.type == "sft":
        promised = "".join(trained_parts(layout.sample())).replace("<eos>", "<|eos|>")
        assert _labelled_text(recipe) == promised
    result = recipe.train()
    assert result.final_metrics["global_step"] == 2
    losses = [m["loss"] for m in result.step_metrics]
    assert losses and all(math.isfinite(loss) for loss in losses)


@pytest.mark.parametrize(
    "name",
    ["OpenAI chat with tool calls", "ShareGPT with function_call / observation turns and tools"],
)
def test_tool_calls_carry_loss_and_tool_results_do_not(
    name: str, tiny_llama: Path, tmp_path: Path
) -> None:
    """The answer that is only a tool call (content null) is trained on: its call is inside
    the labels, and the tool's result and the tools' definitions are not."""
    recipe = _recipe(tiny_llama, _layout(name).format, [_layout(name).row] * 8, tmp_path)
    recipe.setup()
    assert _labelled_text(recipe) == f"{CALL_JSON}<|im_end|>It is 22 C in Paris.<|im_end|>"
    rendered = recipe.tokenizer.decode(recipe.token_report.encoded["train"][0]["input_ids"])
    assert "<tools>\n" in rendered and "<tool_response>\n22 C\n</tool_response>" in rendered


def test_an_answer_that_is_only_a_tool_call_is_what_the_loss_is_computed_on(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """A conversation whose one answer is a tool call with content null: every trainable
    label is the call (no empty turn), TRL's loss is the cross-entropy over exactly those
    tokens, and training on it lowers that loss."""
    import torch

    row = copy.deepcopy(_layout("OpenAI chat with tool calls").row)
    row["messages"] = row["messages"][:2]  # the user's question, the call (content None)
    del row["tools"]  # a short sequence: a few CPU steps are enough to see it learn
    assert row["messages"][1]["content"] is None
    recipe = _recipe(tiny_llama, "messages", [row] * 8, tmp_path, steps=8)
    recipe.setup()
    assert _labelled_text(recipe) == f"{CALL_JSON}<|im_end|>"
    first = recipe.trainer.train_dataset[0]
    trainable = [i for i, label in enumerate(first["labels"]) if label != -100]
    assert len(trainable) >= 20  # the whole call, token by token
    assert recipe.tokenizer.decode([first["input_ids"][i] for i in trainable]).startswith(
        "<tool_call>"
    )

    batch = recipe.trainer.data_collator([first])
    batch = {k: v.to(recipe.trainer.model.device) for k, v in batch.items()}
    assert torch.equal(batch["labels"][0], torch.tensor(first["labels"]))
    with torch.no_grad():
        loss = float(recipe.trainer.compute_loss(recipe.trainer.model, batch))
        logits = recipe.trainer.model(input_ids=batch["input_ids"]).logits[0].float()
    targets = torch.tensor(first["labels"])
    expected = torch.nn.functional.cross_entropy(logits[:-1], targets[1:], ignore_index=-100)
    assert loss > 0 and math.isclose(loss, float(expected), rel_tol=1e-4)

    steps = recipe.train().step_metrics
    print([(round(m["loss"], 3), round(m["mean_token_accuracy"], 3)) for m in steps])
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.3  # it learns to make the call
    assert steps[-1]["mean_token_accuracy"] > 0.3


@pytest.mark.parametrize(
    ("name", "trained"),
    [
        ("text column (JSONL) or one line of a .txt file",
         "The capital of France is Paris.<|eos|>"),
        ("TRL prompt / completion (strings)", " 5.<|eos|>"),  # not the prompt
        ("TRL prompt / completion (turns)", "4<|im_end|>"),  # not the answer inside the prompt
    ],
    ids=["plain text", "prompt/completion strings", "prompt/completion turns"],
)  # fmt: skip
def test_what_the_loss_is_on(name: str, trained: str, tiny_llama: Path, tmp_path: Path) -> None:
    layout = _layout(name)
    recipe = _recipe(tiny_llama, layout.format, [layout.row] * 4, tmp_path)
    recipe.setup()
    assert _labelled_text(recipe) == trained


@pytest.mark.parametrize(
    "name",
    [
        "explicit prompt / chosen / rejected",
        "TRL conversational, implicit prompt",
        "ShareGPT conversations + chosen / rejected turns",
    ],
)
def test_each_preference_layout_gives_dpo_the_same_pair(
    name: str, tiny_llama: Path, tmp_path: Path
) -> None:
    recipe = _recipe(tiny_llama, "preference", [_layout(name).row] * 4, tmp_path)
    recipe.setup()
    row = recipe.trainer.train_dataset[0]
    decode = recipe.tokenizer.decode
    assert decode(row["prompt_ids"]) == (
        "<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert decode(row["chosen_ids"]).startswith("5<|im_end|>")
    assert decode(row["rejected_ids"]).startswith("6<|im_end|>")


def test_dpo_with_tools_keeps_each_rows_tools_and_arguments(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """Two rows calling different tools: Arrow would merge their schemas and arguments into
    one struct (null arguments of the other tool rendered into each call); the rows reach
    TRL exactly as converted, and DPO trains on them."""
    weather = _layout("OpenAI chat with tool calls").row
    clock = json.loads(
        json.dumps(weather)
        .replace("get_weather", "get_time")
        .replace("city", "zone")
        .replace("Paris", "CET")
    )
    rows = []
    for source in (weather, clock):
        turns = source["messages"]
        rows.append(
            {
                "chosen": turns,
                "rejected": [*turns[:3], {"role": "assistant", "content": "No idea."}],
                "tools": source["tools"],
            }
        )
    recipe = _recipe(tiny_llama, "preference", rows * 2, tmp_path)
    recipe.setup()
    prompts = [recipe.tokenizer.decode(r["prompt_ids"]) for r in recipe.trainer.train_dataset]
    for prompt in prompts:
        assert "null" not in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert any('"arguments": {"zone": "CET"}' in p and '"zone"' in p for p in prompts)
    assert any('"arguments": {"city": "Paris"}' in p and "zone" not in p for p in prompts)
    assert recipe.train().final_metrics["global_step"] == 2


# The built-in template with one thing broken, and what the run says before training.
IGNORES_TOOLS = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% generation %}{{ (m['content'] or '') + '<|im_end|>\\n' }}{% endgeneration %}"
    "{% endfor %}"
)
CALLS_BLOCK = CHAT_TEMPLATE[
    CHAT_TEMPLATE.index("{% if message['tool_calls'] is defined") : CHAT_TEMPLATE.index(
        "{{ '<|im_end|>' }}{% endgeneration %}"
    )
]
TEMPLATE_FAILURES = {
    "ignores tools": (
        IGNORES_TOOLS,
        "",
        'dataset.chatTemplate does not render tools (no trace of "get_weather" in',
    ),
    # The names must come from the tools and the calls, not from the text around them.
    "ignores tools while the user names the tool": (
        IGNORES_TOOLS,
        "Use get_weather with city Paris.",
        'dataset.chatTemplate does not render tools (no trace of "get_weather" in',
    ),
    "renders tools but drops the calls": (
        CHAT_TEMPLATE.replace(CALLS_BLOCK, ""),
        "",
        'dataset.chatTemplate does not render tool calls (no trace of "get_weather", "city" in',
    ),
    "renders the calls outside its generation markers": (
        CHAT_TEMPLATE.replace(CALLS_BLOCK, f"{{% endgeneration %}}{CALLS_BLOCK}{{% generation %}}"),
        "",
        "dataset.chatTemplate renders tool calls outside the assistant's trained tokens",
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("template", "question", "message"), TEMPLATE_FAILURES.values(), ids=list(TEMPLATE_FAILURES)
)
def test_a_template_that_loses_tools_is_an_error_naming_it(
    template: str, question: str, message: str, tiny_llama: Path, tmp_path: Path
) -> None:
    row = copy.deepcopy(_layout("OpenAI chat with tool calls").row)
    if question:
        row["messages"][0]["content"] = question
    recipe = _recipe(tiny_llama, "messages", [row] * 2, tmp_path, chatTemplate=template)
    with pytest.raises(ValueError, match=r"^dataset\.chatTemplate ") as caught:
        recipe.setup()
    assert str(caught.value).startswith(message)


def test_a_template_that_refuses_a_sample_names_the_file_and_line(
    tiny_llama: Path, tmp_path: Path
) -> None:
    strict = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('system turns are not supported') }}{% endif %}{% endfor %}"
    ) + CHAT_TEMPLATE
    rows = [_layout("OpenAI chat").row, {"messages": _layout("OpenAI chat").row["messages"][1:]}]
    recipe = _recipe(tiny_llama, "messages", rows, tmp_path, chatTemplate=strict)
    with pytest.raises(DataError) as caught:
        recipe.setup()
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path / 'data.jsonl'}:1: dataset.chatTemplate cannot render it: "
        "system turns are not supported"
    ]
