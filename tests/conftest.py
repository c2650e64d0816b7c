import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Support code (the framework kit, state hashes, hostile files, the model zoo, distributed workers) lives in one
# place, tests/support/, importable from every test folder.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

from harness import BACKENDS, kit  # noqa: E402

# The two pinned environments (issue 19): markers classic_stack / current_stack, deselection of the other stack's
# tests, and a missing package failing a test in its own stack's environment. The hooks live in tests/support/stacks.py.
from stacks import (  # noqa: E402, F401
    pytest_collection_modifyitems,
    pytest_make_collect_report_of_other_stack,
    pytest_configure,
    pytest_make_collect_report,
    pytest_runtest_makereport,
    pytest_terminal_summary,
    this_stack,
)

if this_stack() == "current":
    # PaddleFormers patches paddle.Tensor methods on import unless this flag is 0: the tests see Paddle unpatched.
    os.environ.setdefault("FLAGS_enable_paddleformers_monkey_patch", "0")
    # torch before anything imports paddleformers: imported first, paddleformers hides torch from transformers for
    # the whole process (transformers then builds no torch model)
    import torch  # noqa: E402, F401

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
