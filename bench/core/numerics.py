"""The CPU's floating-point mode for training and probing (one home): subnormal floats flushed to zero.

enum + aux at a high learning rate (the search's choice at 3000 labels, lr 4.07e-3) slowed from 25 s to 99 s per
epoch by epoch 17 on an Intel Xeon, while the same run with subnormals flushed kept 24-26 s and the same
validation accuracy to four decimals at every epoch (docs/results.md, "Subnormal floats"). That slow path is the
CPU's handling of numbers below 1.2e-38, not the estimator's work: left on, it would charge one estimator's wall
time for an artefact of the processor. Every task and every search trial runs with them flushed (x86 with
SSE3: flush-to-zero and denormals-are-zero; elsewhere torch reports that it could not) and records whether it
took (``flush_denormal``)."""
from __future__ import annotations

import torch


def flush_denormals() -> bool:
    """Flush subnormal floats to zero in this process; whether the CPU supports it."""
    return bool(torch.set_flush_denormal(True))
