"""The chart's Grafana dashboard as data: its panels, its PromQL, the metrics it reads.

Shared by the chart test (every query parses, every metric is one the operator exports) and
the integration test (every metric is in a real scrape of the operator running jobs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser

DASHBOARD = (
    Path(__file__).resolve().parents[1] / "helm/finetune-operator/dashboards/finetune-operator.json"
)
# Grafana expands these before Prometheus sees a query; PromQL itself would refuse them.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "30s",
    "$__range": "6h",
    "$namespace": ".*",
    "$job": ".*",
}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every target, and for every query variable's selector."""
    for panel in panels():
        for target in panel["targets"]:
            yield panel["title"], target["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*), *\w+\)", variable["definition"])
            assert inner, f"variable {variable['name']}: {variable['definition']}"
            yield f"variable {variable['name']}", inner.group(1)


def expand(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"an unknown Grafana variable in {expr}"
    return expr


def parse(expr: str) -> Any:
    """The PromQL syntax tree (raises ValueError with the parser's reason)."""
    return promql_parser.parse(expand(expr))


def metric_names(expr: str) -> set[str]:
    """Every metric a query selects, from its syntax tree (not a regex over the text)."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            return
        if isinstance(node, promql_parser.MatrixSelector):
            walk(node.vector_selector)
            return
        if isinstance(node, promql_parser.Call):
            for arg in node.args:
                walk(arg)
            return
        if isinstance(node, promql_parser.BinaryExpr):
            walk(node.lhs)
            walk(node.rhs)
            return
        for attribute in ("expr", "param"):
            child = getattr(node, attribute, None)
            if child is not None:
                walk(child)

    walk(parse(expr))
    return names


def documented_panels(markdown: str) -> list[str]:
    """Panel titles listed in docs/operator.md's "Dashboard" section (`| Title | ...` rows)."""
    section = markdown.split("\n## Dashboard", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [row.split("|")[1].strip() for row in rows]
