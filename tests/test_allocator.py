"""CPU_MALLOC_REUSE: glibc keeps large freed blocks, so repeated large tensors stop faulting in new pages."""
import platform
import subprocess
import sys

import pytest
from detectron2.config import get_cfg

from crobim_d2 import add_crobim_config
from crobim_d2.engine import apply_cpu_malloc_reuse

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates and frees a 64 MiB tensor 20 times, printing the minor page faults of the loop.
FAULTS = """
import resource, sys, torch
if sys.argv[1] == "reuse":
    from crobim_d2.engine import reuse_freed_memory
    assert reuse_freed_memory()
torch.ones(16 * 2**20)  # first touch of the heap, outside the count
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    x = torch.ones(16 * 2**20)
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def loop_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_reuse_stops_page_faults_on_repeated_large_tensors():
    default, reuse = loop_faults("default"), loop_faults("reuse")
    pages = 20 * 64 * 2**20 // 4096  # what 20 fresh mmaps of 64 MiB fault in (4 KiB pages)
    assert default > pages // 2, default
    # At most a few of the 20 tensors get fresh pages: usually 1, up to 4 seen while a training job shared
    # the machine (default: all 20).
    assert reuse < pages // 3, (reuse, default)


def test_config_key_and_device_gate():
    cfg = get_cfg()
    add_crobim_config(cfg)
    assert cfg.CPU_MALLOC_REUSE is True
    cfg.MODEL.DEVICE = "cuda"
    assert apply_cpu_malloc_reuse(cfg) is False  # a GPU run leaves the host allocator alone
    cfg.MODEL.DEVICE = "cpu"
    cfg.CPU_MALLOC_REUSE = False
    assert apply_cpu_malloc_reuse(cfg) is False
