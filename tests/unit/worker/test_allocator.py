"""The worker's glibc allocator setting: applied on glibc, never over the user's own."""

from __future__ import annotations

import platform

import pytest

from worker.allocator import ARENA_MAX, tune_allocator

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


@glibc_only
def test_caps_the_arenas_on_glibc() -> None:
    assert tune_allocator(environ={}) == {"malloc_arena_max": ARENA_MAX}


@glibc_only
def test_leaves_what_the_user_set_in_the_environment() -> None:
    assert tune_allocator(environ={"MALLOC_ARENA_MAX": "4"}) == {}
