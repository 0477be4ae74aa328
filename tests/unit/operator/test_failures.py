"""failures.py is the one table of reasons: every reason the operator writes is in it, and
docs/operator.md lists exactly its failure reasons and blockers."""

from __future__ import annotations

import re

from ftapi.contract import VERDICTS
from ftoperator import failures
from ftoperator.failures import DISRUPTION_REASONS
from fttestkit.paths import REPO

# A reason is a capitalised string literal constructed, returned or defaulted (not tested
# for with `in`, as kube.namespace_going reads the API server's own reasons).
WRITTEN = re.compile(
    r'(?:Failure\(\s*|ChildError\(\s*|return |reason: str = )"([A-Z][A-Za-z]+)"(?! in )'
)


def test_every_reason_the_operator_writes_is_in_the_table() -> None:
    written = {
        match.group(1)
        for source in (REPO / "operator" / "ftoperator").glob("*.py")
        for match in WRITTEN.finditer(source.read_text())
    }
    written |= set(DISRUPTION_REASONS.values())
    assert len(written) > 15  # the scan still finds them
    assert written - set(failures.BY_NAME) == set()


def test_the_docs_list_exactly_the_failure_reasons_and_blockers() -> None:
    doc = (REPO / "docs" / "operator.md").read_text()
    table = doc.split("Failure reasons (", 1)[1].split("| Reason |", 1)[1].split("\n\n", 1)[0]
    documented = {
        name
        for row in table.splitlines()
        if row.startswith("| `")
        for name in re.findall(r"`([A-Za-z0-9]+)`", row.split("|")[1])
    }
    ending = {r.name for r in failures.REASONS if r.scope != "blocker"}
    assert documented == ending
    pending = next(line for line in doc.splitlines() if line.startswith("| Pending |"))
    assert [b for b in failures.BLOCKERS if f"`{b}`" not in pending] == []


def test_ranks_put_root_causes_first() -> None:
    order = sorted(("ExitCode", "OOMKilled", "NodeLost"), key=failures.rank)
    assert order == ["NodeLost", "OOMKilled", "ExitCode"]
    assert failures.rank("SomethingNew") == failures.rank("ExitCode")
    # The trainer's verdicts that a restart cannot cure are the only final attempt reasons.
    assert {v.reason for v in VERDICTS if not v.restart} == failures.FINAL


def test_every_trainer_verdict_has_a_reason_that_restarts_as_the_contract_says() -> None:
    for verdict in VERDICTS:
        reason = failures.BY_NAME[verdict.reason]
        assert (reason.scope, reason.retryable) == ("attempt", verdict.restart), verdict
