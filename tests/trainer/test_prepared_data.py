"""The prepared data (data/prepare.py, data/tokens.py): streamed in batches and tokenized in
parallel workers, it holds exactly what reading every row into memory gives (samples,
labels, order), is made once per node, and is never read half-written."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from ftapi import parse_job
from ftapi.v1alpha1 import FineTuneJob, FineTuneJobSpec
from fttestkit.builders import make_job
from fttrainer.data import prepare, tokens
from fttrainer.data.cleaning import inspect
from fttrainer.data.formats import FormatContext, convert_row
from fttrainer.data.prepare import prepare_data
from fttrainer.data.sources import read_file
from fttrainer.data.tokens import IGNORE, Encoding, check_tokens, encode
from fttrainer.node_cache import COMPLETE
from fttrainer.recipe import Recipe


def _chat_rows(n: int) -> list[dict[str, Any]]:
    """Conversations of varied length, with duplicates and empty answers among them."""
    r = random.Random(1)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        if i % 17 == 3:
            turns = [("user", "the same question"), ("assistant", "the same answer")]
        elif i % 23 == 5:
            turns = [("user", f"question {i}"), ("assistant", "")]
        else:
            question = " ".join(f"w{r.randint(0, 99)}" for _ in range(r.randint(1, 30)))
            answer = " ".join(f"a{r.randint(0, 99)}" for _ in range(r.randint(1, 40)))
            turns = [("system", "be brief"), ("user", question), ("assistant", answer)]
        rows.append({"messages": [{"role": role, "content": text} for role, text in turns]})
    return rows


def _job(data: Path, model: Path, **dataset: Any) -> FineTuneJob:
    spec = {
        "train": {"uri": str(data)},
        "format": "messages",
        "cleaning": {"deduplicate": True},
        "split": {"train": 0.8, "validation": 0.15, "test": 0.05, "seed": 7},
        **dataset,
    }
    job = make_job().set("model.name", str(model)).set("dataset", spec)
    return parse_job(job.set("training.device", "cpu").obj())


def _reference(spec: FineTuneJobSpec, tokenizer: Any) -> dict[str, list[Any]]:
    """Every row in memory, the plain way: converted, checked, deduplicated, split with the
    standard library's shuffle, encoded and held to maxSeqLength."""
    raw = read_file(Path(spec.dataset.train.uri), label=spec.dataset.train.uri)
    context = FormatContext.from_spec(spec.dataset)
    located = [
        (s, row.origin)
        for row in raw.rows
        for s in convert_row(spec.dataset.format, row.data, context)
    ]
    findings = inspect(located)
    drop = set(findings.duplicates) | set(findings.empty)
    kept = [pair for pair in located if pair[1] not in drop]
    split = spec.effective_split()
    order = list(range(len(kept)))
    random.Random(split.seed).shuffle(order)
    n_validation, n_test = round(len(kept) * split.validation), round(len(kept) * split.test)
    parts = {
        "train": [kept[i] for i in sorted(order[n_validation + n_test :])],
        "validation": [kept[i] for i in order[:n_validation]],
        "test": [kept[i] for i in order[n_validation : n_validation + n_test]],
    }
    limit, encoding = spec.dataset.max_seq_length, Encoding.of(spec.dataset, responses_only=True)
    result: dict[str, list[Any]] = {}
    for part, pairs in parts.items():
        encoded = []
        for sample, origin in pairs:
            ids, labels = encode(sample, tokenizer, encoding)
            assert labels is not None
            if len(ids) > limit and spec.dataset.overlong == "drop":
                continue
            encoded.append((sample, origin, ids[:limit], labels[:limit]))
        result[part] = encoded
    return result


@pytest.mark.parametrize(("overlong", "limit"), [("truncate", 215), ("drop", 150)])
def test_prepared_data_is_what_reading_every_row_in_memory_gives(
    overlong: str, limit: int, tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small batches and shards, three workers: every boundary is crossed many times."""
    monkeypatch.setattr(prepare, "BATCH", 37)
    monkeypatch.setattr(tokens, "SHARD", 150)
    monkeypatch.setattr(tokens, "usable_cpus", lambda: 3)
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in _chat_rows(900)))
    job = _job(data, tiny_llama, overlong=overlong, maxSeqLength=limit)
    spec = job.spec
    tokenizer = Recipe(job, tmp_path)._setup_tokenizer()
    prepared = prepare_data(spec, root=tmp_path / "cache")
    report = check_tokens(prepared, spec, tokenizer, responses_only=True)
    expected = _reference(spec, tokenizer)
    assert {p: len(x) for p, x in expected.items()} == {
        p: len(getattr(prepared, p)) for p in expected
    }
    assert 0 < len(expected["test"]) < len(expected["validation"]) < len(expected["train"])
    for part, rows in expected.items():
        samples = getattr(prepared, part)
        assert list(samples) == [sample for sample, _, _, _ in rows]
        assert samples.origins() == [origin for _, origin, _, _ in rows]
        encoded = report.encoded[part]
        assert encoded["input_ids"] == [ids for _, _, ids, _ in rows]
        assert encoded["labels"] == [labels for _, _, _, labels in rows]
    trained = [t for labels in report.encoded["train"]["labels"] for t in labels if t != IGNORE]
    assert trained, "the labels train on the answers"
    assert report.overlong, "some samples are over maxSeqLength"
    dropped = sum(prepared.report.splits.values()) - sum(len(x) for x in expected.values())
    assert dropped == (sum(len(o) for o in report.overlong.values()) if overlong == "drop" else 0)


def test_a_preference_dataset_reaches_dpo_as_its_samples(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DPO's typed columns, written batch by batch, read back as the samples were."""
    monkeypatch.setattr(prepare, "BATCH", 7)
    rows = [
        {
            "prompt": [{"role": "user", "content": f"q{i}"}],
            "chosen": [{"role": "assistant", "content": f"good {i}"}],
            "rejected": [{"role": "assistant", "content": f"bad {i}"}],
        }
        for i in range(40)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    job = (
        make_job()
        .set("model.name", str(tiny_llama))
        .set("dataset", {"train": {"uri": str(data)}, "format": "preference"})
        .set("trainer", {"type": "dpo"})
        .set("evaluation.strategy", "no")
        .set("training", {"device": "cpu", "maxSteps": 1, "batchSize": 2})
        .set("output.uri", str(tmp_path / "published"))
    )
    recipe = Recipe(parse_job(job.obj()), tmp_path / "out")
    recipe.setup()
    assert recipe.token_report is not None
    typed = recipe.token_report.typed["train"]
    assert [typed[i] for i in range(len(typed))] == rows
    assert recipe.train().final_metrics["global_step"] == 1


def test_a_second_setup_reuses_what_the_first_prepared(
    tiny_llama: Path, qa_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted attempt on the node reads the prepared data; a changed maxSeqLength or
    tokenizer prepares its tokens again."""
    from tests.trainer.recipes import cpu_qa_recipe

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "node"))  # a node of its own

    first = cpu_qa_recipe(tiny_llama, qa_data, tmp_path / "a")
    assert first.data is not None and first.token_report is not None
    assert not first.data.reused and not first.token_report.reused
    again = cpu_qa_recipe(tiny_llama, qa_data, tmp_path / "b")
    assert again.data is not None and again.token_report is not None
    assert again.data.reused and again.token_report.reused
    assert again.data.folder == first.data.folder
    # status.startup and result.json say so: the data took no time the second time.
    assert first.startup_clock.startup.data_reused is False
    assert again.startup_clock.startup.data_reused is True
    again.train()
    startup = again.startup_clock.startup
    assert startup.first_step_seconds is not None and startup.total_seconds is not None
    assert startup.total_seconds > (startup.data_seconds or 0) + (startup.model_seconds or 0)
    assert (
        again.token_report.encoded["train"]["input_ids"]
        == (first.token_report.encoded["train"]["input_ids"])
    )
    spec = first.spec
    longer = spec.model_copy(
        update={"dataset": spec.dataset.model_copy(update={"max_seq_length": 32})}
    )
    data = prepare_data(longer)
    assert not check_tokens(data, longer, first.tokenizer, responses_only=True).reused
    first.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert not check_tokens(first.data, spec, first.tokenizer, responses_only=False).reused
    assert check_tokens(first.data, spec, first.tokenizer, responses_only=False).reused


def test_a_half_written_folder_is_never_read(tiny_llama: Path, tmp_path: Path) -> None:
    """The completion marker is written last: a folder without it (a preparation that died)
    is prepared again, not read; one that failed with bad rows leaves nothing behind."""
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in _chat_rows(60)))
    spec = _job(data, tiny_llama).spec
    root = tmp_path / "cache"
    first = prepare_data(spec, root=root)
    expected = list(first.train)
    (first.folder / COMPLETE).unlink()
    (first.folder / "train.arrow").write_bytes(b"half a file")
    again = prepare_data(spec, root=root)
    assert again.folder == first.folder and not again.reused
    assert list(again.train) == expected
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}]}\n{oops\n')
    with pytest.raises(prepare.DataError, match=r"bad\.jsonl:2: invalid JSON"):
        prepare_data(_job(bad, tiny_llama).spec, root=root)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [
        first.folder.name
    ]


def test_another_node_downloads_the_tokens_from_the_output_store(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """The tokens folder, like the samples', is kept in the mirror (the output store) and
    taken from it by a node that lacks it (tests/integration/test_trainer_s3.py: on S3)."""
    from fttrainer.storage import open_store

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in _chat_rows(80)))
    job = _job(data, tiny_llama, maxSeqLength=512)
    tokenizer = Recipe(job, tmp_path)._setup_tokenizer()
    mirror = open_store(str(tmp_path / "output" / "prepared"))
    made = {}
    for node in ("a", "b"):
        prepared = prepare_data(job.spec, root=tmp_path / node, mirror=mirror)
        report = check_tokens(prepared, job.spec, tokenizer, responses_only=True, mirror=mirror)
        made[node] = (prepared.reused, report.reused, report.encoded["train"]["labels"])
    assert made["a"][:2] == (False, False) and made["b"][:2] == (True, True)
    assert made["b"][2] == made["a"][2]
