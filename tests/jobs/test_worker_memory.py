from __future__ import annotations

import os

import numpy as np
import pytest

from medlens.io._process import beside_process, fork_enabled
from medlens.jobs._worker import rss_mb


def _vm_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not fork_enabled(), reason="Linux only")
def test_a_forked_child_sharing_pages_is_not_counted_twice():
    big = np.ones(200 * 2**20 // 8)  # 200 MiB resident in this process
    read_fd, write_fd = os.pipe()
    child = beside_process(lambda: os.read(read_fd, 1))  # shares `big` copy-on-write
    try:
        alone = _vm_rss_mb(os.getpid())
        both = rss_mb(os.getpid())
        # VmRSS would count the shared 200 MiB in the parent and again in the child.
        assert both < alone + 100.0
        assert both > 200.0
    finally:
        child.cancel()
        os.close(read_fd)
        os.close(write_fd)
    assert big.sum() == big.size
