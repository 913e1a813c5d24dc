"""The allocator settings: taken on Linux with glibc, skipped elsewhere."""

from __future__ import annotations

import platform

import pytest

from storyreason import memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_glibc_takes_the_settings() -> None:
    assert memory.keep_freed_memory()


def test_another_c_library_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """musl or macOS: no mallopt call, and it says the settings did not take."""
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda *a: pytest.fail("mallopt called without glibc"))
    assert not memory.keep_freed_memory()
