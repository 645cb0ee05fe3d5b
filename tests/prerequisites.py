"""What the tests need but cannot make themselves (Debian's Fashion-MNIST files, a Slurm cluster).

On a developer's machine a missing prerequisite skips the tests that need it, with the reason. In CI
(the environment variable CI is set, as in `CI=true bash .ci/run`) it is an error: a skip there would
hide a whole area of the suite behind a green run.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

NOT_CI = {"", "0", "false", "no", "off"}


def in_ci() -> bool:
    """True where the environment variable CI is set to anything but empty, 0, false, no or off."""
    return os.environ.get("CI", "").strip().lower() not in NOT_CI


def missing(reason: str) -> NoReturn:
    """Skip the test with ``reason``; in CI, fail it (an error in setup or a fixture) with the same reason."""
    if in_ci():
        pytest.fail(f"{reason} (CI={os.environ['CI']}: a missing prerequisite is an error in CI, not a skip)",
                    pytrace=False)
    pytest.skip(reason)
