"""Stop a training cleanly on SIGINT (Ctrl-C) or SIGTERM (schedulers, `kill`).

The signal only sets a flag; the loop finishes the optimizer step it is in, writes a checkpoint
and raises `TrainingInterrupted`, which the entry point turns into one line and exit code 130
(SIGINT) or 143 (SIGTERM). A second signal acts as if no handler were installed (abort now).
In multi-process runs the flag is summed over ranks each step, so all ranks stop together.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

import torch

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    def __init__(self, signum: int, step: int, checkpoint: str):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"{signal.Signals(signum).name} at step {step}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopOnSignal:
    """Context manager: installs the handlers (main thread only) and restores the previous ones."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        for sig, previous in self._previous.items():  # a second signal: previous behaviour (abort)
            signal.signal(sig, previous)
        print(
            f"{signal.Signals(signum).name}: finishing this step and writing a checkpoint "
            "(send it again to abort without one)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def requested(self, accelerator: Any) -> int | None:
        """The signal number if any rank was signalled (collective when there are several ranks)."""
        if accelerator.num_processes == 1:
            return self.signum
        flag = torch.tensor([float(self.signum or 0)], device=accelerator.device)
        got = float(accelerator.reduce(flag, reduction="sum")[0])
        return self.signum or (int(signal.SIGTERM) if got else None)
