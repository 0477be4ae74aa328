"""A translated config written as a FineTuneJob manifest file (`finetune convert`).

The header says where it came from and how to use it; every note about the original keys
(what was ignored and why, how a value was read) is kept as a comment, so nothing the user
wrote disappears without a trace.
"""

from __future__ import annotations

from typing import Any

import yaml

from .base import Translation


def render_manifest(manifest: dict[str, Any], translation: Translation) -> str:
    lines = [
        f"# FineTuneJob converted by `finetune convert` from {translation.source}",
        f"# ({translation.style}).",
        "#   finetune run <this file>        the same run, locally",
        "#   kubectl apply -f <this file>    in a cluster",
    ]
    output = manifest.get("spec", {}).get("output", {}).get("uri", "")
    if output and "://" not in output:
        lines.append(
            f"# spec.output.uri is a local path ({output}): in a cluster, set an s3:// URI "
            "(and output.s3), or the model stays in the pod's scratch space."
        )
    if manifest.get("spec", {}).get("resources", {}).get("gpusPerNode") == 0:
        lines.append(
            "# spec.resources.gpusPerNode is 0 (a CPU run): set the GPUs per node for a cluster."
        )
    if translation.run_directory and translation.run_directory != output:
        lines.append(
            f"# Run as {translation.style}, each run writes to a new directory under "
            f"{output}; this manifest writes to {output} itself."
        )
    if translation.notes:
        lines.append("# Notes on the original keys:")
        lines.extend(f"#   {note}" for note in translation.notes)
    body = yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False, width=100)
    return "\n".join(lines) + "\n" + body
