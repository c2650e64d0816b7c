import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Support code (the framework kit, state hashes, hostile files, the model zoo, distributed workers) lives in one
# place, tests/support/, importable from every test folder.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

from harness import BACKENDS, kit  # noqa: E402

# ci: deterministic (derandomized) and bounded; thorough: for longer runs (make test-thorough).
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=40,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=400,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=BACKENDS)
def fw(request):
    """The kit of each framework registered in xfreeze.backends.FRAMEWORKS: backend differences live in the kit, so
    tests do not branch on ``fw.name``. A framework without a kit, or that cannot be imported, fails: it is not
    skipped."""
    return kit(request.param)


@pytest.fixture(autouse=True)
def _no_backend_flag(monkeypatch):
    import xfreeze

    monkeypatch.delenv("XFREEZE_BACKEND", raising=False)
    xfreeze.set_backend(None)
    yield
    xfreeze.set_backend(None)
