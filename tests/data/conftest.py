"""Every test of the data folder runs offline: eidetic_func never downloads."""

from __future__ import annotations

import urllib.request

import pytest


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download attempt (torchvision goes through urllib) fails the test at once."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
