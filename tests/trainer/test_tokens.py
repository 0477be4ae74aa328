"""Token-level settings with the tiny tokenizer: addBos/addEos, responseMarkers, packing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ftapi import parse_job
from ftapi.v1alpha1 import ResponseMarkers
from fttestkit.builders import make_job
from fttrainer.data.tokens import IGNORE, Encoding, encode, response_spans
from fttrainer.recipe import Recipe
from fttrainer.templates import CHAT_TEMPLATE

# ChatML as older templates write it: no {% generation %} markers, so the tokenizer cannot
# tell which tokens are the assistant's.
PLAIN_CHATML = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
MARKERS = ResponseMarkers(instruction="<|im_start|>user", response="<|im_start|>assistant\n")
CONVERSATION = [
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def _trained(tokenizer: Any, ids: list[int], labels: list[int] | None) -> str:
    assert labels is not None and len(ids) == len(labels)
    return str(tokenizer.decode([t for t in labels if t != IGNORE]))


def test_response_spans_cover_each_answer_up_to_the_next_user_turn() -> None:
    text = "U: a A: one U: b A: two"
    spans = response_spans(text, ResponseMarkers(instruction="U:", response="A:"))
    assert [text[a:b] for a, b in spans] == [" one ", " two"]


def test_response_markers_mask_a_template_without_generation_markers(tokenizer: Any) -> None:
    tokenizer.chat_template = PLAIN_CHATML
    try:
        messages = {"messages": CONVERSATION}
        # Without markers the template marks nothing: every label is masked (the run fails).
        ids, labels = encode(messages, tokenizer, Encoding(responses_only=True))
        assert _trained(tokenizer, ids, labels) == ""
        ids, labels = encode(messages, tokenizer, Encoding(responses_only=True, markers=MARKERS))
    finally:
        tokenizer.chat_template = CHAT_TEMPLATE
    assert _trained(tokenizer, ids, labels) == "Paris.<|im_end|>\nRome.<|im_end|>\n"
    assert "France" in tokenizer.decode(ids)  # the prompt is still in the input


@pytest.mark.parametrize(
    ("sample", "encoding", "first", "last", "eos_trained"),
    [
        # plain text: eos appended by default (the model learns to stop), removable
        ({"text": "hello"}, Encoding(False), None, "eos", True),
        ({"text": "hello"}, Encoding(False, add_eos=False), None, "o", None),
        ({"text": "hello"}, Encoding(False, add_bos=True), "bos", "eos", True),
        # a conversation ending with the answer: an added eos is trained, the bos is not
        ({"messages": CONVERSATION[:2]}, Encoding(True, add_bos=True, add_eos=True),
         "bos", "eos", True),
        ({"messages": CONVERSATION[:2]}, Encoding(True), None, "\n", None),
    ],
)  # fmt: skip
def test_add_bos_and_add_eos(
    tokenizer: Any,
    sample: dict[str, Any],
    encoding: Encoding,
    first: str | None,
    last: str,
    eos_trained: bool | None,
) -> None:
    ids, labels = encode(sample, tokenizer, encoding)
    assert labels is not None
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id}
    assert (ids[0] == special["bos"]) == (first == "bos")
    assert labels[0] == IGNORE if first == "bos" else True
    if last in special:
        assert ids[-1] == special[last]
        assert (labels[-1] == special[last]) is eos_trained
    else:
        assert ids[-1] != special["eos"]
        assert tokenizer.decode(ids[-1:]).endswith(last)


def test_add_bos_false_removes_a_bos_the_template_puts(tokenizer: Any) -> None:
    tokenizer.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    try:
        sample = {"messages": CONVERSATION[:2]}
        with_bos, _ = encode(sample, tokenizer, Encoding(True))
        without, labels = encode(sample, tokenizer, Encoding(True, add_bos=False))
    finally:
        tokenizer.chat_template = CHAT_TEMPLATE
    assert with_bos[0] == tokenizer.bos_token_id
    assert without == with_bos[1:]
    assert _trained(tokenizer, without, labels) == "Paris.<|im_end|>"


def _qa_job(model: Path, data: Path, **dataset: Any) -> Any:
    spec_dataset = {"train": {"uri": str(data)}, "format": "qa", "maxSeqLength": 64, **dataset}
    return parse_job(
        make_job("tokens")
        .set("output.uri", str(data.parent / "published"))
        .set("model.name", str(model))
        .set("dataset", spec_dataset)
        .set("training", {"maxSteps": 2, "batchSize": 4})
        .set("evaluation.strategy", "no")
        .obj()
    )


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_markers_reach_the_trainer_and_it_trains(
    tiny_llama: Path, qa_file: Path, tmp_path: Path
) -> None:
    job = _qa_job(
        tiny_llama, qa_file, chatTemplate=PLAIN_CHATML, addEos=True,
        responseMarkers={"instruction": MARKERS.instruction, "response": MARKERS.response},
    )  # fmt: skip
    recipe = Recipe(job, tmp_path)
    recipe.setup()
    first = recipe.trainer.train_dataset[0]
    tokenizer = recipe.tokenizer
    trained = _trained(tokenizer, first["input_ids"], first["labels"])
    assert trained.startswith("It is ") and trained.endswith("<|im_end|>\n" + tokenizer.eos_token)
    assert recipe.train().final_metrics["global_step"] == 2


def test_packing_keeps_the_responses_only_labels(
    tiny_llama: Path, qa_file: Path, tmp_path: Path
) -> None:
    recipe = Recipe(_qa_job(tiny_llama, qa_file, packing=True), tmp_path)
    recipe.setup()
    packed = recipe.trainer.train_dataset
    assert len(packed) < 12  # several samples share a row
    row = packed[0]
    assert len(row["input_ids"]) <= 64 and len(row["labels"]) == len(row["input_ids"])
    trained = _trained(recipe.tokenizer, row["input_ids"], row["labels"])
    assert trained.count("It is") >= 2 and "plus" not in trained
    assert recipe.train().final_metrics["global_step"] == 2


def test_add_bos_without_a_bos_token_is_refused(tokenizer: Any) -> None:
    from fttrainer.data.tokens import _check_special_tokens

    bos = tokenizer.bos_token
    tokenizer.bos_token = None
    try:
        with pytest.raises(ValueError, match=r"dataset.addBos: the tokenizer has no bos token"):
            _check_special_tokens(Encoding(True, add_bos=True), tokenizer)
    finally:
        tokenizer.bos_token = bos


# The built-in template before it learnt tools: plain ChatML with generation markers.
CHATML_WITHOUT_TOOLS = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.mark.parametrize("generation_prompt", [False, True])
def test_conversations_without_tools_render_as_plain_chatml(
    tokenizer: Any, generation_prompt: bool
) -> None:
    conversation = [{"role": "system", "content": "Be brief."}, *CONVERSATION]
    with_tools_support = tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=generation_prompt
    )
    plain = tokenizer.apply_chat_template(
        conversation,
        tokenize=False,
        add_generation_prompt=generation_prompt,
        chat_template=CHATML_WITHOUT_TOOLS,
    )
    assert with_tools_support == plain


def test_evaluation_prompts_carry_the_samples_tools(tiny_llama: Path, tokenizer: Any) -> None:
    """Generated answers (BLEU, ROUGE-L) are asked with the tools the sample was trained
    with, and plain-text prompt_completion samples are prompted as plain text."""
    from transformers import AutoModelForCausalLM

    from fttrainer.data.catalog import LAYOUTS
    from fttrainer.evaluation.generation import encode_prompt
    from fttrainer.evaluation.scoring import generate_answers, prompt_messages, reference_answer

    tool_sample = next(x for x in LAYOUTS if x.name == "OpenAI chat with tool calls").sample()
    plain = next(x for x in LAYOUTS if x.name == "TRL prompt / completion (strings)").sample()
    inputs = encode_prompt(tokenizer, prompt_messages(tool_sample), tools=tool_sample["tools"])
    text = tokenizer.decode(inputs["input_ids"][0])
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert text.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(encode_prompt(tokenizer, plain["prompt"])["input_ids"][0]) == (
        "2 plus 3 is"
    )
    assert reference_answer(plain) == " 5." and prompt_messages(plain)[-1]["content"] == (
        "2 plus 3 is"
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    answers = generate_answers(model, tokenizer, [tool_sample, plain], max_new_tokens=2)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
