"""Library output a `finetune` user cannot act on, silenced before the training stack loads.

Every run used to start with lines like these, none of which says anything about the run:

    Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'...
    [WARNING] [real_accelerator.py:213:get_accelerator] Setting accelerator to CPU...
    FutureWarning: `is_gradient_checkpointing` is deprecated and will be removed in v6...
    Loading weights: 100%|██████████| 21/21 [00:00<00:00, 2571.46it/s]   (into a log file)

Each is silenced by name, narrowly, so that every other warning still reaches the user:
a wider filter would hide the ones that matter (a dtype the GPU lacks, a tokenizer without
a pad token, a data problem). Add an entry only for output that is the same on every run
and that no setting of ours or the user's can change.
"""

from __future__ import annotations

import logging
import os
import warnings

# bitsandbytes tries an optional faster CPU 4-bit kernel from the `kernels` package at
# import, on every machine with AVX-512 BF16, and warns when it is absent; its fallback works.
BITSANDBYTES_CPU_KERNELS = "bitsandbytes.backends.cpu.ops"
# httpx logs every request at INFO ("HTTP Request: PUT http://...  201 Created"): the Hub
# and registry pushes would print one line per blob; their outcome is logged by us.
HTTP_CLIENT = "httpx"
# transformers 5 deprecated the attribute that TRL and PEFT still read internally.
LIBRARY_DEPRECATIONS = (r"`is_gradient_checkpointing` is deprecated",)


def quiet_libraries(*, progress_bars: bool, cuda: bool) -> None:
    """Call once per process, before transformers, peft, trl or bitsandbytes are imported.
    `progress_bars`: stderr is a terminal (bars are noise in a log file, one line each
    update); `cuda`: a GPU is visible (DeepSpeed then detects it without a word)."""
    logging.getLogger(BITSANDBYTES_CPU_KERNELS).setLevel(logging.ERROR)
    logging.getLogger(HTTP_CLIENT).setLevel(logging.WARNING)
    if not cuda:
        # Named, DeepSpeed skips its detection and the warning that it found no GPU.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for message in LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    if not progress_bars:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
