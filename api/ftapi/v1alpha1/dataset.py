"""spec.dataset: where the data is, what shape it has, and how it becomes token sequences."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field

from ._base import ApiModel, Rule, cel_list, is_set, spoken_list
from .common import LongText, ShortText, Text, Uri

DatasetFormat = Literal[
    "plain_text",
    "instruction",
    "mcq",
    "qa",
    "sharegpt",
    "messages",
    "oasst",
    "preference",
    "prompt_only",
    "prompt_completion",
]
# Formats that have a prompt and a response, so "train on responses only" means something.
FORMATS_WITH_RESPONSES = (
    "instruction",
    "mcq",
    "qa",
    "sharegpt",
    "messages",
    "oasst",
    "prompt_completion",
)
Ratio = Annotated[float, Field(ge=0.0, le=1.0)]
Column = Annotated[str, Field(min_length=1, max_length=256)]


class DataSource(ApiModel):
    """One data file (or hub dataset)."""

    uri: Uri
    """Local path, s3://bucket/key or hf://org/name. Files: .jsonl .json .csv .parquet .txt
    (the extension picks the reader)."""
    split: ShortText | None = None
    """For hf:// sources: the split to read (default train)."""

    rules = (
        Rule(
            cel="!has(self.split) || self.uri.startsWith('hf://')",
            message="split selects a split of an hf:// dataset; files have none",
            check=lambda d: d.split is None or d.uri.startswith("hf://"),
            field=".split",
        ),
    )


class Split(ApiModel):
    """Ratios that carve validation/test sets out of the train source."""

    train: Ratio
    """Fraction kept for training."""
    validation: Ratio = 0.0
    """Fraction held out for evaluation during training."""
    test: Ratio = 0.0
    """Fraction held out for the final test metrics."""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 42  # numpy's range
    """Shuffle seed, so the same rows land in the same split on every run."""

    rules = (
        Rule(
            cel="self.train + self.validation + self.test >= 0.999999"
            " && self.train + self.validation + self.test <= 1.000001",
            message="train + validation + test must sum to 1",
            check=lambda s: abs(s.train + s.validation + s.test - 1.0) <= 1e-6,
        ),
        Rule(
            cel="self.train > 0.0",
            message="train must be greater than 0",
            check=lambda s: s.train > 0.0,
            field=".train",
        ),
    )


class Columns(ApiModel):
    """Column names in your files, when they differ from the format's defaults (shown in
    brackets). Naming a column the format does not read is an error."""

    text: Column | None = None
    """plain_text: the text column [text]."""
    instruction: Column | None = None
    """instruction: the instruction [instruction]."""
    input: Column | None = None
    """instruction: the optional input/context [input]."""
    output: Column | None = None
    """instruction: the expected output [output]."""
    question: Column | None = None
    """qa, mcq: the question [question]."""
    choices: Column | None = None
    """mcq: the list (or A/B/C/D mapping) of options [choices]."""
    answer: Column | None = None
    """qa, mcq: the ground-truth answer; for mcq a letter or an index [answer]."""
    system: Column | None = None
    """Any format: a per-row system prompt [system]."""
    messages: Column | None = None
    """messages: OpenAI-style role/content list [messages]; sharegpt: from/value list
    [conversations]; oasst: the message tree [prompt, else messages, else the row itself];
    preference (ShareGPT layout): the shared conversation [conversations]. A list, or a JSON
    string of one (CSV cells)."""
    tools: Column | None = None
    """messages, sharegpt, preference, prompt_completion: the tool (function) definitions
    the chat template shows the model, a list or a JSON string of one [tools]. Bare function
    schemas (name/description/parameters) are wrapped as {type: function, function: ...}.
    prompt_only rows keep it as a reward column (GRPO does not render per-row tools)."""
    prompt: Column | None = None
    """preference, prompt_only, prompt_completion: the prompt [prompt]."""
    completion: Column | None = None
    """prompt_completion: the completion the loss is computed on [completion]."""
    chosen: Column | None = None
    """preference: the preferred completion [chosen]."""
    rejected: Column | None = None
    """preference: the dispreferred completion [rejected]."""
    images: Column | None = None
    """Formats with turns: the row's images, in the order of the `<image>` placeholders
    (or bare `{"type": "image"}` parts) in its user turns [images]: paths beside the data
    file, s3:// URIs or data: URLs. Content parts that carry their own image need no
    column."""


ALL_FORMATS: tuple[str, ...] = get_args(DatasetFormat)
# Which formats read each entry of `columns` (formats.py in the trainer): an entry for
# another format would be ignored, and the rows read from the default column instead.
COLUMN_FORMATS: dict[str, tuple[str, ...]] = {
    "text": ("plain_text",),
    "instruction": ("instruction",),
    "input": ("instruction",),
    "output": ("instruction",),
    "question": ("qa", "mcq"),
    "choices": ("mcq",),
    "answer": ("qa", "mcq"),
    "system": tuple(f for f in ALL_FORMATS if f != "plain_text"),
    "messages": ("messages", "sharegpt", "oasst", "preference"),
    "tools": ("messages", "sharegpt", "preference", "prompt_completion"),
    "prompt": ("preference", "prompt_only", "prompt_completion"),
    "completion": ("prompt_completion",),
    "chosen": ("preference",),
    "rejected": ("preference",),
    "images": tuple(f for f in ALL_FORMATS if f not in ("plain_text", "oasst")),
}


def _column_read_by_format(column: str) -> Rule:
    """Rule: `columns.<column>` is set only for a format that reads it."""
    formats = COLUMN_FORMATS[column]
    return Rule(
        cel=f"!has(self.columns) || !has(self.columns.{column})"
        f" || self.format in {cel_list(formats)}",
        message=f"columns.{column} is only read by format {spoken_list(formats)}",
        check=lambda d: (
            d.columns is None or getattr(d.columns, column) is None or d.format in formats
        ),
        field=f".columns.{column}",
    )


class ResponseMarkers(ApiModel):
    """Literal strings that open a user turn and an assistant turn in the rendered text,
    for chat templates the trainer cannot split into turns by itself."""

    instruction: Text
    """Text that starts a user turn, e.g. `<|im_start|>user`."""
    response: Text
    """Text that starts an assistant turn, e.g. `<|im_start|>assistant`."""


class Cleaning(ApiModel):
    """What the data check does besides reporting (it always reports counts)."""

    deduplicate: bool = False
    """Drop exact duplicate rows (they are always counted)."""
    drop_empty: bool = True
    """Drop rows whose response/text is empty (they are always counted)."""
    pii: Literal["off", "report", "drop", "fail"] = "report"
    """Scan for e-mail addresses, phone numbers and card numbers: report hits, drop those
    rows, or fail the run."""


class DatasetSpec(ApiModel):
    """Training data and its preparation."""

    train: DataSource
    """The training data (and the source of validation/test rows when `split` is set)."""
    validation: DataSource | None = None
    """Separate validation data. Without it and without `split`, 10% of train is held out
    (when evaluation is on)."""
    test: DataSource | None = None
    """Separate test data, scored once after training."""
    format: DatasetFormat = "instruction"
    """Row shape: plain_text (one sample per line/row, or a text column), instruction
    (alpaca: instruction/input/output), mcq (question/choices/answer), qa (question/answer
    columns), sharegpt (conversations from/value; function_call/observation turns and a
    tools column), messages (OpenAI roles; tool_calls, tool turns and a tools column),
    oasst (message trees, flattened to conversations), preference (for DPO:
    prompt/chosen/rejected, chosen/rejected conversations with an implicit shared prompt, or
    ShareGPT conversations with chosen/rejected turns), prompt_only (prompt plus extra
    columns passed to rewards, for GRPO), prompt_completion (TRL's prompt/completion rows,
    strings or turns; loss on the completion). `finetune formats` shows an example of
    each."""
    columns: Columns | None = None
    """Column names, when they differ from the format's defaults."""
    split: Split | None = None
    """Carve validation/test out of train by ratio and seed."""
    system_prompt: LongText | None = None
    """System prompt applied to every sample (see systemPromptMode)."""
    system_prompt_mode: Literal["override", "fallback"] = "override"
    """override: systemPrompt replaces rows' own system prompts; fallback: used only for rows
    without one."""
    max_seq_length: Annotated[int, Field(ge=16, le=1048576)] = 1024
    """Longest token sequence fed to the model; see `overlong` for longer samples."""
    overlong: Literal["truncate", "drop", "fail"] = "truncate"
    """What to do with samples longer than maxSeqLength. Counts are always reported."""
    packing: bool = False
    """Pack several short samples into one maxSeqLength sequence (faster; no
    cross-contamination with padding-free attention)."""
    padding_free: bool | None = None
    """Concatenate a batch's rows instead of padding them to the longest, with attention
    kept inside each row (FlashAttention's variable-length kernel). Same loss, no compute on
    padding. Unset: on for SFT on a GPU without packing."""
    train_on_responses_only: bool | None = None
    """Compute the loss on assistant/response tokens only. Unset: on for formats with
    responses, off for plain_text. A batch with no trainable tokens fails the run."""
    response_markers: ResponseMarkers | None = None
    """Turn markers for trainOnResponsesOnly when the chat template has no generation
    markers."""
    use_chat_template: bool | None = None
    """Render conversations with a chat template. Unset: yes when the tokenizer has one
    (else a built-in ChatML-style template) for chat-shaped formats."""
    chat_template: LongText | None = None
    """A Jinja chat template that replaces the tokenizer's."""
    add_bos: bool | None = None
    """Prepend BOS to each sample. Unset: whatever the tokenizer/template does."""
    add_eos: bool | None = None
    """Append EOS to each sample, so the model learns to stop. Unset: yes for plain_text."""
    num_proc: Annotated[int, Field(ge=1, le=256)] | None = None
    """Worker processes for tokenization. Unset: number of CPUs, at most 8."""
    cleaning: Cleaning = Cleaning()
    """Data cleaning; a data report is always produced."""

    rules = (
        Rule(
            cel="!(has(self.validation) && has(self.split) && self.split.validation > 0.0)",
            message="split.validation must be 0 when a separate validation source is given",
            check=lambda d: not (is_set(d.validation) and d.split and d.split.validation > 0),
            field=".split.validation",
        ),
        Rule(
            cel="!(has(self.test) && has(self.split) && self.split.test > 0.0)",
            message="split.test must be 0 when a separate test source is given",
            check=lambda d: not (is_set(d.test) and d.split and d.split.test > 0),
            field=".split.test",
        ),
        Rule(
            cel="!(has(self.trainOnResponsesOnly) && self.trainOnResponsesOnly)"
            f" || self.format in {cel_list(FORMATS_WITH_RESPONSES)}",
            message="trainOnResponsesOnly needs a format with responses "
            "(plain_text, preference and prompt_only have none)",
            check=lambda d: not d.train_on_responses_only or d.format in FORMATS_WITH_RESPONSES,
            field=".trainOnResponsesOnly",
        ),
        Rule(
            cel="!has(self.responseMarkers) || !has(self.trainOnResponsesOnly)"
            " || self.trainOnResponsesOnly",
            message="responseMarkers are only used with trainOnResponsesOnly",
            check=lambda d: d.response_markers is None or d.train_on_responses_only is not False,
            field=".responseMarkers",
        ),
        Rule(
            cel="!has(self.systemPrompt) || self.format != 'plain_text'",
            message="systemPrompt needs a format with turns: plain_text rows are trained as "
            "they are",
            check=lambda d: d.system_prompt is None or d.format != "plain_text",
            field=".systemPrompt",
        ),
        *(_column_read_by_format(column) for column in COLUMN_FORMATS),
    )
