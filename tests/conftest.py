"""Test session set-up: 8 simulated CPU devices, set before JAX initializes its backend.

Single-device tests build their mesh from `jax.devices()[:1]`; multi-device tests use all 8.
"""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [
        os.environ.get("XLA_FLAGS", ""),
        "--xla_force_host_platform_device_count=8",
        # A collective that hangs on the simulated devices fails fast instead of stalling CI.
        "--xla_cpu_collective_call_terminate_timeout_seconds=30",
    ]
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def devices8():
    devices = jax.devices()
    assert len(devices) == 8, "conftest must set 8 simulated devices before jax starts"
    return devices


@pytest.fixture(scope="session")
def device1():
    return jax.devices()[:1]


@pytest.fixture(scope="session", autouse=True)
def _feature_net_cache(tmp_path_factory):
    """Feature classifiers are trained once per test session into a private cache, never the user's."""
    os.environ["GENJAX_CACHE"] = str(tmp_path_factory.mktemp("genjax_cache"))
