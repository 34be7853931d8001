"""The host-allocator tuning: tensor-sized blocks come from the heap and stay there once freed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

# one 16 MiB tensor (a hidden map of cifar-small at batch 32), in a fresh process: where glibc puts
# it while it lives (mmap'ed bytes) and what the heap keeps after it is freed (free heap bytes)
_PROBE = textwrap.dedent("""
    import ctypes, json, torch
    from launch.host_allocator import tune_host_allocator

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    applied = tune_host_allocator()
    before = libc.mallinfo2()
    hidden = torch.ones(4 << 20)  # 16 MiB, written
    live = libc.mallinfo2()
    del hidden
    freed = libc.mallinfo2()
    print(json.dumps({"applied": applied, "mmapped_while_live": live.hblkhd - before.hblkhd,
                      "heap_free_after": freed.fordblks}))
""")
MIB = 1 << 20


def _probe(setting: str) -> dict:
    env = dict(os.environ, MDEQ_HOST_ALLOCATOR=setting)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True,
                         timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt tuning is glibc/Linux only")
def test_tuned_allocator_keeps_freed_tensor_blocks_in_the_heap():
    tuned, default = _probe("tuned"), _probe("default")
    assert tuned["applied"] and not default["applied"]
    # glibc's defaults: a fresh 16 MiB block is mmap'ed and unmapped on free, so the next tensor of
    # that size arrives as fresh pages to fault in and zero
    assert default["mmapped_while_live"] >= 16 * MIB
    assert default["heap_free_after"] < 16 * MIB
    # tuned: served from the heap, and still there for the next tensor once freed
    assert tuned["mmapped_while_live"] < MIB
    assert tuned["heap_free_after"] >= 16 * MIB
