"""Test set-up shared by every module.

Two logical CPU devices are configured before TensorFlow initialises its
devices, so `tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])` tests run on
a one-CPU machine. Fixtures: `two_cpu_strategy`. Under CI=true hypothesis runs
derandomized (profile "ci").
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI (CI=true) runs the property tests with a fixed seed, so a submission's result does not
# depend on the draw; developers' runs keep exploring (and replay failures from .hypothesis/).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
except RuntimeError:  # devices already initialised (e.g. imported elsewhere first)
    pass


@pytest.fixture
def two_cpu_strategy():
    """A MirroredStrategy over two logical CPU devices.

    Cross-device reduction goes through one device: each new strategy with the
    default collective ops restarts TF's collective keys, and a second strategy in
    the same process whose first all-reduce has another shape aborts ("Shape
    mismatch in the collective instance").
    """
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) < 2:
        pytest.skip("two logical CPU devices could not be configured")
    return tf.distribute.MirroredStrategy(
        [d.name for d in logical[:2]], cross_device_ops=tf.distribute.ReductionToOneDevice())
