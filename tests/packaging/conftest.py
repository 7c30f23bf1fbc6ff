"""Fixtures for the packaging tests; the helpers live in pkg_support.py."""
from __future__ import annotations

import pytest
import yaml

from pkg_support import CHART, NON_DEFAULT_VALUES, render


@pytest.fixture(scope="session")
def default_render() -> dict:
    return render(None)


@pytest.fixture(scope="session")
def custom_render() -> dict:
    return render(NON_DEFAULT_VALUES)


@pytest.fixture(scope="session")
def rbac_rules() -> list[dict]:
    rules = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
    assert isinstance(rules, list) and rules, "files/rbac-rules.yaml must be a non-empty list"
    return rules
