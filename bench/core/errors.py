"""Bad input, said once: the errors and argument helpers every command shares (a leaf module).

Bad input prints one line on stderr (``bench: error: ...``) and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import List

from ssvae.errors import ConfigError, DataError  # noqa: F401  (re-exported: one place to import from)

__all__ = ["ConfigError", "DataError", "EXIT_USAGE", "EXIT_STORAGE", "UsageError", "StorageError", "Parser", "fail",
           "int_list", "str_list", "add_data_args", "writable"]

EXIT_USAGE = 2
#: a result could not be written (full disk, read-only folder): the grid stops, finished files intact
EXIT_STORAGE = 3


class UsageError(Exception):
    """Bad input found by the harness; printed as one line, exit status 2."""


class StorageError(OSError):
    """The output folder cannot take a write (full disk, read-only): one line; the grid stops."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(message)


def fail(message: str, status: int = EXIT_USAGE) -> int:
    print(f"bench: error: {message}", file=sys.stderr)
    return status


def writable(folder) -> bool:
    """Whether a file can be created in ``folder`` (or its nearest existing parent). ``os.access`` says yes
    to root everywhere; a real file says what the file system allows (read-only mount, no inodes, full disk)."""
    folder = Path(folder)
    probe = folder if folder.exists() else next((p for p in folder.parents if p.exists()), Path("."))
    try:
        with tempfile.TemporaryFile(dir=probe):
            return True
    except OSError:
        return False


def int_list(text: str) -> List[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def str_list(text: str) -> List[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="folder holding MNIST/raw (default: $SSVAE_DATA_DIR, else ./data)")
    p.add_argument("--no-download", action="store_true", help="never try to download MNIST")
