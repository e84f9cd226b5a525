"""The worker's glibc allocator settings: applied on glibc, never over the user's own."""

from __future__ import annotations

import platform

import pytest

from worker.allocator import ARENA_MAX, MMAP_THRESHOLD_BYTES, tune_allocator

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


@glibc_only
def test_sets_a_fixed_mmap_threshold_and_two_arenas_on_glibc() -> None:
    assert tune_allocator(environ={}) == {
        "malloc_mmap_threshold": MMAP_THRESHOLD_BYTES,
        "malloc_arena_max": ARENA_MAX,
    }


@glibc_only
def test_leaves_what_the_user_set_in_the_environment() -> None:
    assert tune_allocator(environ={"MALLOC_ARENA_MAX": "4"}) == {
        "malloc_mmap_threshold": MMAP_THRESHOLD_BYTES
    }
    assert tune_allocator(environ={"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "0"}) == {}
