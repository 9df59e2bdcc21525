"""docs/ci.md's GitHub Actions workflow, run locally: the `ab` job's `run:` commands in a shallow and in a
full clone of a copy of this tree, with CI=true as on GitHub. A real (one-case) A/B: about a minute."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
#: steps not run here: the venv is this checkout's, linked into each clone
SKIPPED = ("make install",)
#: the real A/B kept to one small case and few rounds (the job's optional $REGRESS_ARGS); a wide
#: tolerance: this test is about the workflow's plumbing, the verdicts have their own tests
REGRESS_ARGS = "--cases baseline:sup --rounds 3 --processes 1 --tolerance 1.0"

pytestmark = pytest.mark.slow


def workflow() -> dict:
    text = (REPO / "docs" / "ci.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "docs/ci.md should hold one workflow"
    return yaml.safe_load(blocks[0])


def run_steps(job: dict):
    steps = [s for s in job["steps"] if "run" in s]
    assert [s for s in steps if s["run"].strip() in SKIPPED], "the job installs with `make install`"
    return [s for s in steps if s["run"].strip() not in SKIPPED]


def _git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A repository holding this tree's code: `main` (base) and `feature` (one more commit, the PR)."""
    src = tmp_path_factory.mktemp("origin")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", "bench", "ssvae", "pyproject.toml",
                            "Makefile", "requirements.lock"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    _git("init", "-q", "-b", "main", cwd=src)
    _git("add", "-A", cwd=src)
    _git("commit", "-q", "-m", "base", cwd=src)
    _git("checkout", "-q", "-b", "feature", cwd=src)
    (src / "NOTES.md").write_text("a pull request\n")
    _git("add", "NOTES.md", cwd=src)
    _git("commit", "-q", "-m", "head", cwd=src)
    return src


def clone(origin: Path, dest: Path, shallow: bool) -> Path:
    depth = ["--depth", "1"] if shallow else []
    _git("clone", "-q", *depth, "--branch", "feature", f"file://{origin}", str(dest), cwd=dest.parent)
    (dest / ".venv").symlink_to(REPO / ".venv")
    return dest


def run_job(checkout: Path, tmp: Path):
    """Run the `ab` job's commands in order, as Actions does (bash -eo pipefail), until one fails."""
    job = workflow()["jobs"]["ab"]
    env = {k: v for k, v in os.environ.items() if k not in ("REGRESS_MACHINE", "SSVAE_HISTORY_DIR", "REGRESS_ARGS")}
    given = {"CI": "true", "BASE_REF": "main", "HISTORY_DIR": str(tmp / "history"), "REGRESS_OUT": str(tmp / "out"),
             "REGRESS_ARGS": REGRESS_ARGS}
    assert set(job["env"]) <= set(given), f"the job's env has names this test does not set: {job['env']}"
    env.update(given)
    done = []
    for step in run_steps(job):
        assert "${{" not in step["run"], f"a run: command pastes an expression into the script: {step['run']}"
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=checkout,
                              env=env, capture_output=True, text=True, timeout=540)
        done.append((step.get("name", step["run"][:40]), proc))
        if proc.returncode != 0:
            break
    return done, given


def test_workflow_fails_loudly_in_a_shallow_clone_and_passes_in_a_full_one(origin, tmp_path):
    shallow = clone(origin, tmp_path / "shallow", shallow=True)
    done, given = run_job(shallow, tmp_path / "shallow-job")
    name, proc = done[-1]
    assert "A/B" in name and proc.returncode == 2, (name, proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("bench: error: regress ab: no commit 'origin/main'")
    assert "shallow clone" in proc.stderr and "fetch-depth: 0" in proc.stderr
    assert not Path(given["HISTORY_DIR"]).exists()

    full = clone(origin, tmp_path / "full", shallow=False)
    done, given = run_job(full, tmp_path / "full-job")
    for name, proc in done:
        assert proc.returncode == 0, (name, proc.stdout[-3000:], proc.stderr[-3000:])
    assert len(done) == len(run_steps(workflow()["jobs"]["ab"]))
    ab_out = done[0][1].stdout
    assert "regress ab: A = origin/main = " in ab_out and "regress ab: OK: 1 cases checked" in ab_out, ab_out
    out, hist = Path(given["REGRESS_OUT"]), Path(given["HISTORY_DIR"])
    assert "| baseline:sup |" in (out / "ab.md").read_text()
    assert json.loads((out / "ab.json").read_text())["rows"]["baseline:sup"]["verdict"] == "same"
    [machine] = [p for p in hist.iterdir() if p.is_dir()]
    assert len(list(machine.glob("*-ab.json"))) == 1 and len(list(machine.glob("*-ab.pytest-benchmark.json"))) == 1
    assert (out / "history" / "history.md").exists() and (out / "history" / "history.png").exists()
    assert not (full / "results" / "history").exists()  # nothing written into the checkout
    assert subprocess.run(["git", "worktree", "list"], cwd=full, capture_output=True, text=True).stdout.count("\n") == 1
    sys.stdout.write(ab_out)
