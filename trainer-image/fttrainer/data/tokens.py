"""Token-level checks, run once the tokenizer is known and before any training step.

Two silent failures of fine-tuning stacks are made loud here:
- samples longer than maxSeqLength are counted and handled by `dataset.overlong`
  (truncate and report, drop and report, or fail listing every one);
- a sample whose trainable (assistant) tokens are all masked, e.g. because truncation cut
  the whole answer or the chat template cannot mark assistant turns, would train on
  nothing: TRL drops such rows quietly; we fail naming them;
- tools and tool calls a chat template does not render (many base-model templates ignore
  `tools`), or renders outside its generation markers (the model would see calls but never
  learn to make them), fail the run naming the template, and a template that cannot render
  a sample at all names the sample's file and line.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from ftapi.v1alpha1 import DatasetSpec, FineTuneJobSpec, ResponseMarkers
from fttrainer.node_cache import cached_folder, folder_for
from fttrainer.storage import Store

from .formats import sample_tools, sample_turns, trained_call_names
from .image_tokens import ImageCosts, last_image_end
from .prepare import DataError
from .prepared import (
    FORMAT_VERSION,
    PreparedData,
    stream_arrow,
    stream_rows,
    stream_taken,
    write_arrow,
)
from .sources import Problem
from .typed import write_typed
from .vision_rows import with_parts

log = logging.getLogger(__name__)
Encoded = dict[str, list[int]]  # input_ids and labels (-100 where the loss is off)
IGNORE = -100
SHARD = 4096
"""Samples below which tokenizing stays in this process (a worker costs a process start)."""


@dataclass(frozen=True)
class Encoding:
    """How SFT samples become (input_ids, labels): the dataset's token-level settings."""

    responses_only: bool
    add_bos: bool | None = None
    add_eos: bool | None = None
    markers: ResponseMarkers | None = None

    @classmethod
    def of(cls, dataset: DatasetSpec, *, responses_only: bool) -> Encoding:
        return cls(responses_only, dataset.add_bos, dataset.add_eos, dataset.response_markers)


@dataclass
class TokenReport:
    longest: int = 0
    mean: float = 0.0
    overlong: dict[str, list[str]] = field(default_factory=dict)  # part -> origins
    action: str = "truncate"
    # For SFT: each kept sample as the trainer consumes it (truncated, labels masked), a
    # mapped `datasets.Dataset` per part, so TRL need not tokenize again.
    encoded: dict[str, Any] = field(default_factory=dict, repr=False)
    # For DPO and GRPO: the kept samples in typed columns (data/typed.py), likewise mapped.
    typed: dict[str, Any] = field(default_factory=dict, repr=False)
    reused: bool = False  # found complete on this node: nothing was tokenized now

    def render(self) -> str:
        count = sum(len(v) for v in self.overlong.values())
        line = f"  tokens: longest {self.longest}, mean {self.mean:.1f}"
        if count:
            verb = {"truncate": "truncated", "drop": "dropped", "fail": "refused"}[self.action]
            line += f"; {count} over maxSeqLength ({verb})"
        return line


@dataclass
class _Tally:
    """What one range of samples gave: the token report's parts, and its problems."""

    longest: int = 0
    total: int = 0
    count: int = 0
    overlong: list[str] = field(default_factory=list)
    unrenderable: list[Problem] = field(default_factory=list)
    untrainable: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class _Work:
    """Everything tokenizing a range of samples needs besides the tokenizer: with it, what
    each worker process is started with (module globals, set once per worker)."""

    spec: FineTuneJobSpec
    encoding: Encoding
    source: str
    sft: bool
    images: ImageCosts | None = None  # a vision-language model's: what each image costs


_TOKENIZER: Any = None
_WORK: _Work | None = None


def check_tokens(
    data: PreparedData,
    spec: FineTuneJobSpec,
    tokenizer: Any,
    *,
    responses_only: bool,
    mirror: Store | None = None,
    images: ImageCosts | None = None,
) -> TokenReport:
    """Measure every sample; apply the overlong policy; fail on untrainable ones. With
    `images` (a vision-language model's processor reads the samples), each sample is
    measured with its images' tokens, and SFT samples are kept typed as DPO's are (the
    collator tokenizes them with their pictures). The result (SFT: input_ids and labels;
    the rows kept) is kept on the node beside the
    prepared samples, under a key of the samples, the tokenizer and the token settings: a
    restarted attempt, and every other rank of the node, reads it instead (or downloads it
    from `mirror`, the job's output store, where the node that made it put a copy)."""
    encoding = Encoding.of(spec.dataset, responses_only=responses_only)
    _check_special_tokens(encoding, tokenizer)
    sft = spec.trainer.type == "sft" and images is None
    work = _Work(spec, encoding, template_source(spec, tokenizer), sft, images)
    key = "\n".join(
        [
            f"format {FORMAT_VERSION}",
            data.folder.name,
            tokenizer_fingerprint(tokenizer),
            f"responses_only {responses_only} trainer {spec.trainer.type} encoded {sft}",
            f"images {images.fingerprint() if images else None}",
            spec.dataset.model_dump_json(),
        ]
    )
    started = time.monotonic()

    def fill(partial: Path) -> str:
        _tokenize(data, work, tokenizer, partial)
        return key

    target = folder_for(data.folder.parent, "tokens", key)
    folder, filled = cached_folder(target, fill, mirror=mirror if data.pinned else None)
    if not data.pinned:  # made from data nothing can find again: gone with this process
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    report = _open(folder, data, sft=work.sft)
    report.reused = not filled
    verb = "tokenized" if filled else "reused"
    log.info("data: %s %s in %.1f s", verb, folder, time.monotonic() - started)
    return report


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What decides how a tokenizer encodes: its vocabulary and rules (the fast
    tokenizer's whole definition), its chat template and special tokens."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    settings = [
        type(tokenizer).__name__,
        tokenizer.chat_template,
        len(tokenizer),
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        tokenizer.special_tokens_map,
        getattr(tokenizer, "add_bos_token", None),
        getattr(tokenizer, "add_eos_token", None),
        getattr(tokenizer, "is_fast", None),
    ]
    digest.update(json.dumps(settings, default=str, sort_keys=True).encode())
    return digest.hexdigest()


def _open(folder: Path, data: PreparedData, *, sft: bool) -> TokenReport:
    import numpy as np
    from datasets import Dataset

    fields = json.loads((folder / "tokens.json").read_text())
    report = TokenReport(**fields)
    for part in data.report.splits:
        data.kept[part] = np.load(folder / f"{part}.rows.npy", mmap_mode="r")
        if (folder / f"{part}.arrow").is_file():
            datasets = report.encoded if sft else report.typed
            datasets[part] = Dataset.from_file(str(folder / f"{part}.arrow"))
    return report


def _tokenize(data: PreparedData, work: _Work, tokenizer: Any, folder: Path) -> None:
    """Tokenize every part into `folder`, in parallel workers for large data; raise
    DataError for samples that cannot be trained on, as the policy says."""
    import numpy as np

    spec = work.spec
    _check_representatives(data, work, tokenizer)
    size = _shard_size(data)
    ranges = [
        (part, start, min(start + size, count))
        for part, count in data.report.splits.items()
        for start in range(0, count, size)
    ]
    jobs = [
        (str(data.folder), part, start, stop, str(folder / f"{part}-{start}.arrow"))
        for part, start, stop in ranges
    ]
    workers = min(len(jobs), usable_cpus()) if sum(data.report.splits.values()) > SHARD else 1
    if workers > 1:
        # This process is one of the workers (every `workers`-th job), the others are
        # spawned: spawn, not fork, since this process has threads (the watchdog, torch's,
        # the tokenizer's) whose locks a forked child would inherit held.
        here = set(range(0, len(jobs), workers))
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers - 1, _start_worker, (tokenizer, work)) as pool:
            spawned = [j for i, j in enumerate(jobs) if i not in here]
            pending = pool.starmap_async(_tokenize_range, spawned, chunksize=1)
            own = iter(_tokenize_here(tokenizer, work, [jobs[i] for i in sorted(here)]))
            others = iter(pending.get())
            tallies = [next(own) if i in here else next(others) for i in range(len(jobs))]
    else:
        tallies = _tokenize_here(tokenizer, work, jobs)
    unrenderable = [p for t in tallies for p in t.unrenderable]
    if unrenderable:
        raise DataError(unrenderable)
    limit = spec.dataset.max_seq_length
    overlong: dict[str, list[str]] = {}
    for (part, _, _), tally in zip(ranges, tallies, strict=True):
        if tally.overlong:
            overlong.setdefault(part, []).extend(tally.overlong)
    if spec.dataset.overlong == "fail" and overlong:
        problems = [
            Problem(origin, f"longer than maxSeqLength {limit} tokens")
            for origins in overlong.values()
            for origin in origins
        ]
        raise DataError(problems)
    untrainable = [p for t in tallies for p in t.untrainable]
    if untrainable:
        raise DataError(untrainable)
    for part in data.report.splits:
        shards = [folder / f"{part}-{start}.arrow" for p, start, _ in ranges if p == part]
        kept: list[Any] = []  # the kept rows, batch by batch
        if work.sft:
            schema = _encoded_schema()
            encoded = (b.select(schema.names) for b in _shard_batches(shards, kept))
            write_arrow(folder / f"{part}.arrow", schema, encoded)
        else:
            for _ in _shard_batches(shards, kept):
                pass
        rows = np.concatenate(kept or [np.zeros(0, np.int64)])
        np.save(folder / f"{part}.rows.npy", rows)
        if not work.sft and len(rows):
            write_typed(folder / f"{part}.arrow", partial(_kept_samples, data, part, rows))
        for shard in shards:
            shard.unlink()
        if part == "train" and not len(rows):
            raise DataError([Problem(spec.dataset.train.uri, "no training samples left")])
    count = sum(t.count for t in tallies)
    report = TokenReport(
        longest=max((t.longest for t in tallies), default=0),
        mean=sum(t.total for t in tallies) / count if count else 0.0,
        overlong=overlong,
        action=spec.dataset.overlong,
    )
    (folder / "tokens.json").write_text(
        json.dumps({k: v for k, v in asdict(report).items() if k not in ("encoded", "reused")})
    )


def _kept_samples(data: PreparedData, part: str, rows: Any) -> Iterator[list[Any]]:
    """A part's kept samples (rows ascending), decoded a batch at a time from the streamed
    file."""
    for batch in stream_taken(data.folder / f"{part}.arrow", rows):
        yield [json.loads(text) for text in batch.column("sample").to_pylist()]


def _shard_batches(shards: list[Path], kept: list[Any]) -> Iterator[Any]:
    """The workers' shards' batches in order, streamed (not mapped: the merge leaves no page
    of them resident); each batch's kept rows appended to `kept`."""
    for shard in shards:
        for batch in stream_arrow(shard):
            kept.append(batch.column("row").to_numpy().copy())  # a view would hold the batch
            yield batch


def _tokenize_here(tokenizer: Any, work: _Work, jobs: list[Any]) -> list[_Tally]:
    """Jobs run in this process, as a worker would run them."""
    _start_worker(tokenizer, work)
    try:
        return [_tokenize_range(*job) for job in jobs]
    finally:
        _start_worker(None, None)


def _start_worker(tokenizer: Any, work: _Work | None) -> None:
    global _TOKENIZER, _WORK
    _TOKENIZER, _WORK = tokenizer, work


def _shard_size(data: PreparedData) -> int:
    total = sum(data.report.splits.values())
    return max(SHARD, math.ceil(total / usable_cpus()))


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity, bounded by its cgroup's quota (a pod's
    CPU limit)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus or 1, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus or 1)


def _encoded_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])


def _tokenize_range(samples_folder: str, part: str, start: int, stop: int, out: str) -> _Tally:
    """Samples [start, stop) of a part: measured, encoded, checked; the kept ones written to
    `out` (their row, and for SFT input_ids and labels), the rest tallied."""
    import pyarrow as pa

    tokenizer, work = _TOKENIZER, _WORK
    assert work is not None
    limit, policy = work.spec.dataset.max_seq_length, work.spec.dataset.overlong
    schema = pa.schema([("row", pa.int64())])
    if work.sft:
        schema = pa.schema([*schema, *_encoded_schema()])
    tally = _Tally()

    def batches() -> Any:
        row = start
        for batch in stream_rows(Path(samples_folder) / f"{part}.arrow", start, stop):
            columns: dict[str, list[Any]] = {name: [] for name in schema.names}
            texts = batch.column("sample").to_pylist()
            origins = batch.column("origin").to_pylist()
            for text, origin in zip(texts, origins, strict=True):
                row += 1
                sample = json.loads(text)
                pictures = (sample.get("images") or []) if work.images else []
                if work.images:  # as the processor's template renders it
                    sample = with_parts(sample)
                try:
                    ids, labels = encode(sample, tokenizer, work.encoding)
                except (TemplateError, TypeError, KeyError) as error:  # the template's own
                    message = f"{work.source} cannot render it: {error}"
                    tally.unrenderable.append(Problem(origin, message))
                    continue
                # A sample's images come before the answers that follow them: those
                # answers' tokens move right by the images' tokens.
                shift = work.images.of(pictures) if work.images else 0
                length = len(ids) + shift
                tally.longest = max(tally.longest, length)
                tally.total += length
                tally.count += 1
                if length > limit:
                    tally.overlong.append(origin)
                    if policy == "drop":
                        continue
                    if policy == "truncate" and pictures and work.images:
                        end = last_image_end(sample, tokenizer, work.images)
                        if end > limit:  # the collator's cut would split an image
                            tally.untrainable.append(Problem(origin, _cut_image(end, limit)))
                within = max(0, limit - shift)
                trainable = (
                    None if labels is None else sum(1 for x in labels[:within] if x != IGNORE)
                )
                if trainable == 0 and policy != "fail":
                    why = (
                        f"no trainable tokens within maxSeqLength {limit} (the answer is cut off)"
                        if length > limit
                        else "no trainable tokens: the chat template marks no assistant turn"
                        " (give dataset.responseMarkers, or a chat template with generation "
                        "markers)"
                    )
                    tally.untrainable.append(Problem(origin, why))
                columns["row"].append(row - 1)
                if work.sft:
                    assert labels is not None, "an SFT sample is always labelled"
                    columns["input_ids"].append(ids[:limit])
                    columns["labels"].append(labels[:limit])
            yield columns

    write_arrow(Path(out), schema, batches())
    return tally


def _cut_image(end: int, limit: int) -> str:
    return (
        f"its images' tokens reach token {end}, past maxSeqLength {limit}: truncating it "
        "would cut an image (raise dataset.maxSeqLength, bound vision.maxImagePixels, or "
        "set dataset.overlong drop)"
    )


def _check_representatives(data: PreparedData, work: _Work, tokenizer: Any) -> None:
    """The checks one sample answers for all: tool definitions and calls reach the rendered
    text, and (loss on responses only) the answers' calls are trained."""
    check_tool_rendering(data, tokenizer, work.source)
    if not work.encoding.responses_only or not work.sft:
        return
    for sample in _flagged(data, "trained_calls"):
        try:
            _, labels = encode(sample, tokenizer, work.encoding)
        except (TemplateError, TypeError, KeyError):
            continue  # reported with its file and line by the pass over every sample
        assert labels is not None
        check_trained_calls(sample, tokenizer, labels, work.source)
        return


def _flagged(data: PreparedData, flag: str) -> Any:
    """The samples with a flag of samples_schema set, parts in order."""
    import numpy as np

    for part in data.report.splits:
        table = data.table(part)
        for position in np.flatnonzero(table.column(flag).to_numpy(zero_copy_only=False)):
            yield json.loads(table.column("sample")[int(position)].as_py())


def template_source(spec: FineTuneJobSpec, tokenizer: Any) -> str:
    """Which chat template renders the conversations, in words for error messages."""
    from fttrainer.templates import CHAT_TEMPLATE

    if spec.dataset.chat_template:
        return "dataset.chatTemplate"
    if tokenizer.chat_template == CHAT_TEMPLATE:
        return "the built-in ChatML template (fttrainer/templates.py)"
    return f"the chat template of {spec.model.tokenizer or spec.model.name}"


def check_tool_rendering(data: PreparedData, tokenizer: Any, source: str) -> None:
    """Tool definitions and tool calls must reach the rendered text: a template that ignores
    them would train the model on answers without the calls (the silent loss this check
    exists for). Checked on the first sample with tools and the first with tool calls: each
    tool's name must appear in the text rendered with `tools=` more often than without
    them (a name the conversation mentions is no proof), and each call's name and argument
    names more often than in the conversation rendered with its calls left out."""
    with_tools = next(iter(_flagged(data, "tools")), None)
    with_calls = next(iter(_flagged(data, "calls")), None)
    if with_tools is not None:
        listed = sample_tools(with_tools) or []
        messages = sample_turns(with_tools)
        text = _render(tokenizer, messages, listed, source)
        without = _render(tokenizer, messages, None, source, baseline=True)
        names = [str(tool.get("function", tool)["name"]) for tool in listed]
        _require(names, text, without, source, "tools")
    if with_calls is not None:
        messages = sample_turns(with_calls)
        tools = sample_tools(with_calls)
        text = _render(tokenizer, messages, tools, source)
        without = _render(
            tokenizer, [_without_calls(m) for m in messages], tools, source, baseline=True
        )
        wanted = [
            str(part)
            for m in messages
            for call in m.get("tool_calls") or []
            for part in (call["function"]["name"], *call["function"]["arguments"])
        ]
        _require(wanted, text, without, source, "tool calls")


def check_trained_calls(
    sample: dict[str, Any], tokenizer: Any, labels: list[int], source: str
) -> None:
    """With the loss on responses only, the assistant's tool calls must be among the trained
    tokens: a template whose generation markers stop before the calls would teach the model
    to describe tools but never to call them."""
    trained = str(tokenizer.decode([t for t in labels if t != IGNORE]))
    missing = [name for name in trained_call_names(sample) if name not in trained]
    if missing:
        raise ValueError(
            f"{source} renders tool calls outside the assistant's trained tokens (its "
            "{% generation %} markers, or dataset.responseMarkers, leave out "
            f"{', '.join(sorted(set(missing)))}): the model would never learn to call tools. "
            "Use a template whose generation markers cover the tool calls (the built-in one "
            "of fttrainer/templates.py does) in dataset.chatTemplate"
        )


def _render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: Any,
    source: str,
    *,
    baseline: bool = False,
) -> str:
    """The text of a conversation; a template that refuses it is named. A baseline (the
    conversation without its tools or calls) some templates refuse just compares with ""."""
    try:
        return str(tokenizer.apply_chat_template(messages, tools=tools, tokenize=False))
    except (TemplateError, TypeError, KeyError) as error:
        if baseline:
            return ""
        raise ValueError(f"{source} cannot render a conversation with tools: {error}") from None


def _without_calls(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "tool_calls"}


def _require(wanted: list[str], text: str, without: str, source: str, what: str) -> None:
    """Each wanted string appears in `text` more often than in `without` (the rendering
    without the tools or calls), so a name the conversation itself mentions is no proof."""
    missing = [w for w in dict.fromkeys(wanted) if text.count(w) <= without.count(w)]
    if missing:
        shown = ", ".join(json.dumps(m) for m in missing[:5])
        raise ValueError(
            f"{source} does not render {what} (no trace of {shown} in the rendered "
            "conversation): the model would train without them. Use a tokenizer whose chat "
            "template supports tools, or set dataset.chatTemplate (the built-in template of "
            "fttrainer/templates.py renders them)"
        )


def _check_special_tokens(encoding: Encoding, tokenizer: Any) -> None:
    for wanted, token in ((encoding.add_bos, "bos"), (encoding.add_eos, "eos")):
        if wanted and getattr(tokenizer, f"{token}_token_id") is None:
            raise ValueError(f"dataset.add{token.title()}: the tokenizer has no {token} token")


def encode(
    sample: dict[str, Any], tokenizer: Any, encoding: Encoding
) -> tuple[list[int], list[int] | None]:
    """(input_ids, labels) for SFT-shaped samples; labels None for the other shapes (only
    measured). Mirrors TRL's SFT tokenization (the chat template with assistant masks for
    conversations, text + eos for language modelling), then applies addBos/addEos."""
    if "messages" in sample:
        messages, tools = sample["messages"], sample_tools(sample)
        ids, labels = _encode_conversation(messages, tokenizer, encoding, tools=tools)
        start = sample.get("completion_start")
        if (
            encoding.responses_only
            and start
            and any(m.get("role") == "assistant" for m in messages[:start])
        ):
            labels = _mask_prompt(labels, ids, messages[:start], tokenizer, tools)
        answer_last = messages[-1].get("role") == "assistant"
        train_eos = answer_last or not encoding.responses_only
    elif isinstance(sample.get("completion"), str):
        # TRL's standard prompt-completion rows: plain text, the loss on the completion.
        train_eos = True
        prompt = list(tokenizer(sample["prompt"])["input_ids"])
        completion = list(tokenizer(sample["completion"], add_special_tokens=False)["input_ids"])
        ids = prompt + completion
        labels = [IGNORE if encoding.responses_only else t for t in prompt] + completion
        if encoding.add_eos is None:  # the model must learn to stop after its answer
            encoding = Encoding(encoding.responses_only, encoding.add_bos, True)
    elif "text" in sample:
        train_eos = True
        ids = list(tokenizer(sample["text"])["input_ids"])
        labels = list(ids)
        if encoding.add_eos is None:  # language modelling: the model must learn to stop
            encoding = Encoding(encoding.responses_only, encoding.add_bos, True)
    else:
        messages = sample_turns(sample)
        if messages and isinstance(messages[0], dict):
            encoded = tokenizer.apply_chat_template(
                messages, tools=sample_tools(sample), tokenize=True, return_dict=True
            )
            return list(encoded["input_ids"]), None
        return [], None
    return _bos_eos(ids, labels, tokenizer, encoding, train_eos=train_eos)


def _encode_conversation(
    messages: list[dict[str, Any]], tokenizer: Any, encoding: Encoding, *, tools: Any = None
) -> tuple[list[int], list[int]]:
    if encoding.responses_only and encoding.markers is not None:
        return _mask_by_markers(messages, tokenizer, encoding.markers, tools=tools)
    encoded = tokenizer.apply_chat_template(
        messages,
        tools=tools,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=encoding.responses_only,
    )
    ids = list(encoded["input_ids"])
    if not encoding.responses_only:
        return ids, list(ids)
    masks = encoded["assistant_masks"]
    return ids, [t if m else IGNORE for t, m in zip(ids, masks, strict=True)]


def _mask_prompt(
    labels: list[int],
    ids: list[int],
    prompt: list[dict[str, Any]],
    tokenizer: Any,
    tools: Any,
) -> list[int]:
    """prompt_completion turns: the assistant turns inside the prompt are context, so the
    labels are masked up to where the prompt's own rendering stops matching the sample's."""
    encoded = tokenizer.apply_chat_template(prompt, tools=tools, tokenize=True, return_dict=True)
    prefix = list(encoded["input_ids"])
    shared = 0
    while shared < min(len(prefix), len(ids)) and prefix[shared] == ids[shared]:
        shared += 1
    return [IGNORE] * shared + labels[shared:]


def _mask_by_markers(
    messages: list[dict[str, Any]], tokenizer: Any, markers: ResponseMarkers, *, tools: Any = None
) -> tuple[list[int], list[int]]:
    """Loss on the text after each response marker up to the next instruction marker: for
    chat templates without generation markers (the old completion-only collator's rule,
    applied to characters so a marker need not tokenize the same in context)."""
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    spans = response_spans(text, markers)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("dataset.responseMarkers needs a fast tokenizer (character offsets)")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [
        token
        if any(start <= begin and end <= stop for start, stop in spans) and end > begin
        else IGNORE
        for token, (begin, end) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return ids, labels


def response_spans(text: str, markers: ResponseMarkers) -> list[tuple[int, int]]:
    """Character ranges of the responses: after each response marker, up to the next
    instruction marker (or the end of the text)."""
    spans = []
    position = text.find(markers.response)
    while position != -1:
        start = position + len(markers.response)
        stop = text.find(markers.instruction, start)
        stop = len(text) if stop == -1 else stop
        spans.append((start, stop))
        position = text.find(markers.response, stop)
    return spans


def _bos_eos(
    ids: list[int], labels: list[int], tokenizer: Any, encoding: Encoding, *, train_eos: bool
) -> tuple[list[int], list[int]]:
    """addBos/addEos: true adds the token where it is missing, false removes it where the
    tokenizer or template put it. An added eos is trained when the sample ends with the
    answer: that is what teaches the model to stop."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if encoding.add_bos and (not ids or ids[0] != bos):
        ids, labels = [bos, *ids], [IGNORE, *labels]
    elif encoding.add_bos is False and ids and ids[0] == bos:
        ids, labels = ids[1:], labels[1:]
    if encoding.add_eos and (not ids or ids[-1] != eos):
        ids, labels = [*ids, eos], [*labels, eos if train_eos else IGNORE]
    elif encoding.add_eos is False and ids and ids[-1] == eos:
        ids, labels = ids[:-1], labels[:-1]
    return ids, labels
