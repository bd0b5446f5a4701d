"""Fixtures of the toy generator's tests."""

import pytest

from tests.helpers.toy import make_small_toy


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    """A 6 + 3 image toy dataset, generated once; tests must not modify it."""
    return make_small_toy(tmp_path_factory.mktemp("toy"))
