"""runtime/backends/cuda.py: device arrays, copies and the block pool through cuda-bindings. The GPU tests
run real allocations and copies where a CUDA GPU and cuda-bindings are present (no TensorRT needed), and
skip elsewhere with the probe's reason; the probe itself must never crash a machine without a GPU."""

import numpy as np
import pytest
from covo_edge.runtime.backends.cuda import (
    MIN_BLOCK,
    Cuda,
    DeviceArray,
    Gpu,
    probe,
    size_class,
)

GPU = probe()
needs_gpu = pytest.mark.skipif(isinstance(GPU, str), reason=f"needs a GPU: {GPU}")


def test_probe_answers_without_crashing():
    assert isinstance(GPU, Gpu) or (isinstance(GPU, str) and GPU)
    if isinstance(GPU, Gpu):
        major, _ = GPU.compute_capability.split(".")
        assert int(major) >= 5 and GPU.memory_bytes > 2**30 and GPU.name


def test_size_classes_are_powers_of_two_from_the_minimum():
    assert [size_class(n) for n in (0, 1, 256, 257, 4096, 5000)] == [MIN_BLOCK, MIN_BLOCK, 256, 512, 4096, 8192]


@pytest.fixture(scope="module")
def cuda():
    return Cuda(GPU.ordinal)


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "bool"])
def test_host_device_round_trip(cuda, dtype):
    x = (np.random.default_rng(0).standard_normal((3, 5, 7)) * 100).astype(dtype)
    d = cuda.to_device(x)
    assert isinstance(d, DeviceArray) and d.shape == (3, 5, 7) and d.dtype == x.dtype and d.nbytes == x.nbytes
    np.testing.assert_array_equal(cuda.to_host(d), x)


@needs_gpu
def test_empty_tensors_get_a_real_pointer(cuda):
    d = cuda.to_device(np.zeros((1, 2, 0, 16), np.float16))
    assert d.ptr != 0 and cuda.to_host(d).shape == (1, 2, 0, 16)


@needs_gpu
def test_a_dropped_array_gives_its_block_to_the_next_of_its_class(cuda):
    a = cuda.empty((1000,), np.float32)  # 4000 bytes -> the 4096 class
    ptr, held = a.ptr, cuda.allocated
    del a
    b = cuda.empty((1020,), np.float32)
    assert b.ptr == ptr and cuda.allocated == held
    c = cuda.empty((1000,), np.float32)  # b still holds the block: a new one
    assert c.ptr != ptr and cuda.allocated == held + 4096
    x = np.arange(1020, dtype=np.float32)
    b2 = cuda.to_device(x)
    np.testing.assert_array_equal(cuda.to_host(b2), x)
    del b, c, b2
    assert cuda.trim() >= 2 * 4096 and all(not v for v in cuda.free.values())


@needs_gpu
def test_a_growing_cache_alternates_between_two_blocks(cuda):
    """The KV cache pattern: each step's present (past + 1 position) replaces the past."""
    past = cuda.to_device(np.zeros((1, 2, 100, 16), np.float32))
    seen = set()
    for n in range(101, 120):
        present = cuda.to_device(np.full((1, 2, n, 16), n, np.float32))
        seen.add(present.ptr)
        past = present
    assert len(seen) <= 3 and cuda.to_host(past)[0, 0, 0, 0] == 119
