"""Shared fixtures: tiny networks and synthetic data, and real MNIST where it is present."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pytest
import torch

from ssvae import data as ssdata
from ssvae.model import SSVAE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny nets: torch's intra-op threads only add contention; on a loaded 2-core machine
    the statistical tests run 5-15x slower with them."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
    torch.set_flush_denormal(False)  # a task run in process flushes subnormals (bench.core.numerics): not beyond it


@pytest.fixture
def tiny_model():
    """An SS-VAE on 12-pixel images with 3 latent dims and 8 hidden units."""
    pyro.set_rng_seed(1)
    return SSVAE(input_size=12, z_dim=3, hidden=(8,))


@pytest.fixture
def tiny_batch():
    g = torch.Generator().manual_seed(3)
    return (torch.rand(5, 12, generator=g) > 0.5).float()


def synthetic_raw(n_train=600, n_test=100, side=4, seed=0):
    """uint8 images (side x side) and digits, each class a different brightness pattern."""
    g = torch.Generator().manual_seed(seed)

    def make(n):
        digits = torch.arange(n) % 10
        digits = digits[torch.randperm(n, generator=g)]
        base = (torch.arange(side * side).float() % 10 == digits[:, None]).float() * 200
        noise = torch.randint(0, 50, (n, side * side), generator=g).float()
        return (base + noise).clamp(0, 255).to(torch.uint8).reshape(n, side, side), digits

    tx, ty = make(n_train)
    vx, vy = make(n_test)
    return tx, ty, vx, vy


@pytest.fixture
def synthetic_data():
    tx, ty, vx, vy = synthetic_raw()
    return ssdata.split(tx, ty, vx, vy, labels=100, seed=0, train_size=500, sha256="synthetic")


def offline(monkeypatch):
    """Simulate a machine without network: any connection beyond this host fails as it would offline."""
    import errno
    import ipaddress
    import socket

    real_connect = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        try:
            local = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = isinstance(address, (str, bytes))  # a unix socket path
        if not local:
            raise OSError(errno.ENETUNREACH, "Network is unreachable (simulated offline)")
        return real_connect(self, address)

    def getaddrinfo(host, *a, **k):
        if host not in (None, "localhost", "127.0.0.1", "::1"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (simulated offline)")
        return real_getaddrinfo(host, *a, **k)

    real_getaddrinfo = socket.getaddrinfo
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """No test reaches the network: in process, connections beyond this host fail; subprocesses get
    SSVAE_NO_DOWNLOAD=1 (MNIST is never downloaded)."""
    offline(monkeypatch)
    monkeypatch.setenv("SSVAE_NO_DOWNLOAD", "1")


def mnist_dir():
    """The MNIST folder as an absolute path (links the tests make to it hold from any folder), or None."""
    root = Path(os.environ.get("SSVAE_DATA_DIR", REPO / "data")).resolve()
    return root if ssdata._have_raw(root) else None


needs_mnist = pytest.mark.skipif(mnist_dir() is None, reason="MNIST not found (set SSVAE_DATA_DIR)")


def bench(*args, timeout=900, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if mnist_dir():
        env["SSVAE_DATA_DIR"] = str(mnist_dir())
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**env, **kw.pop("env", {})}, **kw)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    if mnist_dir() is None:
        pytest.skip("MNIST not found (set SSVAE_DATA_DIR)")
    out = tmp_path_factory.mktemp("smoke") / "out"
    t0 = time.time()
    r = bench("run", "--preset", "smoke", "--out", str(out), timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, time.time() - t0, r


# -- the fast loop ---------------------------------------------------------------------------------
#: Modules whose every test is slow: subprocess grids, Dask clusters, the browser, timed steps.
SLOW_MODULES = {"test_dask", "test_faults", "test_report_browser", "test_timing_probe", "test_steps", "test_probe"}
#: Fixtures that train on MNIST or run a grid.
SLOW_FIXTURES = {"smoke_run"}
#: Single tests of seconds each on two cores (`pytest -m "not slow" --durations=60`, 2026-12-04): whole reports
#: of the committed references or of many estimators, statistical checks over hundreds of gradient draws.
#: The fast loop keeps a quicker test of the same code beside each (one report of a fabricated folder,
#: the unbiasedness of each estimator family at few draws). They are plain in-process tests: also marked
#: ``parallel``, and `make test` runs them on every core with the fast ones.
SLOW_TESTS = {
    "test_samples": {"test_report_says_which_layout_it_shows"},
    "test_every_machine": {"test_report_is_the_same_data_on_another_machine"},
    "test_report": {"test_damaged_folder_does_not_crash",
                    "test_tables_byte_identical_on_rerun", "test_a_contended_timing_probe_is_labelled"},
    "test_plots": {"test_many_estimators_become_small_multiples", "test_no_empty_or_crowded_panel_on_the_fabricated_folder",
                   "test_no_empty_or_crowded_panel_in_the_references"},
    "test_metrics": {"test_reference_gradient_is_the_enumerated_gradient_with_its_stated_error"},
    "test_estimators": {"test_trained_neural_baseline_lowers_the_variance", "test_trained_decaying_average_lowers_the_variance",
                        "test_sequential_and_parallel_enumeration_agree_in_expectation",
                        "test_gradient_is_unbiased_in_every_group_on_perturbed_parameters"},
}
#: Tests that need the machine to themselves (slow, never beside other test workers): this one measures the
#: load of other processes, and skips when the machine is already busy.
SOLO_TESTS = {"test_faults_without_training": {"test_other_cpu_load_sees_a_busy_process_beside_the_task"}}


def pytest_collection_modifyitems(config, items):
    """Mark as ``slow`` what `make test-fast` leaves out: a test in :data:`SLOW_MODULES` or :data:`SLOW_TESTS`,
    one using a fixture of :data:`SLOW_FIXTURES`, one that needs real MNIST (``needs_mnist``), and any test marked
    ``slow`` by hand; :data:`SLOW_TESTS` are also ``parallel``. `make test` runs everything: the tests not slow
    or parallel on every core, then the rest one at a time."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        reasons = [m.kwargs.get("reason", "") for m in item.iter_markers("skipif")]
        function = getattr(item, "originalname", item.name)
        if function in SLOW_TESTS.get(module, ()):
            item.add_marker(pytest.mark.parallel)
        if (module in SLOW_MODULES or SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
                or function in SLOW_TESTS.get(module, ()) or function in SOLO_TESTS.get(module, ())
                or any("MNIST" in r for r in reasons)):
            item.add_marker(pytest.mark.slow)

