"""One training per output folder, and a clear line when the folder cannot be written.

`run_lock(output_dir)` creates `output_dir/.train.lock` holding `PID HOST`. A second training
into the same folder while that process lives is refused with its PID; a lock whose process is
gone (SIGKILL, power loss) is taken over. Creating the lock is also the check that the folder
is writable, done before any model loads.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from core.config import ConfigError

LOCK_FILE = ".train.lock"


def _holder(lock: Path) -> tuple[int | None, str]:
    try:
        pid, _, host = lock.read_text().strip().partition(" ")
        return int(pid), host
    except (OSError, ValueError):
        return None, ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def acquire(run_dir: Path) -> Path:
    """Create the lock (taking over a stale one); ConfigError naming the holder or the write problem."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"output_dir '{run_dir}' cannot be created ({exc.strerror or exc}); choose another output_dir"
        ) from exc
    lock, host = run_dir / LOCK_FILE, socket.gethostname()
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid, holder_host = _holder(lock)
            if pid is not None and pid != os.getpid():
                if holder_host and holder_host != host:
                    raise ConfigError(
                        f"output_dir '{run_dir}' is in use by a training on {holder_host} (PID {pid}); "
                        f"choose another output_dir, or delete {lock} if that run is gone"
                    ) from None
                if _alive(pid):
                    raise ConfigError(
                        f"output_dir '{run_dir}' is in use by a running training (PID {pid}); wait "
                        "for it to end, stop it, or choose another output_dir"
                    ) from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        except OSError as exc:
            raise ConfigError(
                f"output_dir '{run_dir}' is not writable ({exc.strerror or exc}); choose another output_dir"
            ) from exc
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()} {host}\n")
        return lock
    raise ConfigError(f"output_dir '{run_dir}': could not take {lock}; another training keeps creating it")


@contextlib.contextmanager
def run_lock(run_dir: Path, main_process: bool = True) -> Iterator[None]:
    """Hold the folder's lock for the run (only the main process takes it)."""
    lock = acquire(run_dir) if main_process else None
    try:
        yield
    finally:
        if lock is not None and _holder(lock)[0] == os.getpid():
            lock.unlink(missing_ok=True)
