"""The locked install: `make install` installs requirements.lock with --require-hashes and then checks
the venv against it (`python -m bench.core.provenance --check-lock`). These tests check that check."""
from bench.core.provenance import canonical_name, lock_mismatches, lock_pins

from .conftest import REPO

LOCK = """\
#    pip-compile --generate-hashes ...
jinja2==3.1.6 \\
    --hash=sha256:0137fb05990d35f1275a587e9aee6d56da821fc83491a0fb838183be43f66d6d
    # via ssvae-bench (pyproject.toml)
torch==2.14.1 \\
    --hash=sha256:305a61f61f35f128579f299c5bd33d475f6a01c6307336139632e30856c4854d
typing-extensions==4.16.0 ; python_version < "3.13" \\
    --hash=sha256:aa
"""


def test_lock_pins_and_mismatches():
    assert lock_pins(LOCK) == {"jinja2": "3.1.6", "torch": "2.14.1", "typing-extensions": "4.16.0"}
    same = {"jinja2": "3.1.6", "torch": "2.14.1", "typing-extensions": "4.16.0", "extra": "1"}
    assert lock_mismatches(LOCK, same) == []
    other = {**same, "torch": "2.15.0+cu132"}
    other.pop("jinja2")
    assert lock_mismatches(LOCK, other) == ["jinja2: locked 3.1.6, installed nothing",
                                            "torch: locked 2.14.1, installed 2.15.0+cu132"]
    assert canonical_name("Typing_Extensions") == "typing-extensions"


def test_the_committed_lock_pins_every_package_with_hashes():
    text = (REPO / "requirements.lock").read_text()
    pins = lock_pins(text)
    assert {"torch", "torchvision", "pyro-ppl", "scipy", "jinja2", "filelock", "pytest", "distributed"} <= set(pins)
    blocks = text.split("\n")
    # every pinned line continues with at least one sha256 hash
    for i, line in enumerate(blocks):
        if "==" in line and not line.startswith(("#", " ")):
            assert line.rstrip().endswith("\\") and blocks[i + 1].strip().startswith("--hash=sha256:"), line
