"""CUDA through cuda-bindings' driver API (no torch, no pycuda): probe the GPU, device arrays, copies, a stream.

It knows nothing of TensorRT, so it can be tested on any CUDA machine. Every call goes to one stream of
the device's primary context (the context TensorRT's runtime uses too), so work, copies and the reuse of
freed memory are ordered without events.

Memory comes from a pool of power-of-two blocks: a `DeviceArray` that is dropped gives its block back,
and the next array of that size class takes it. The KV cache grows by one position per decode step and
each step's output is a new tensor (present = past + new), so without the pool every step would pay
two cuMemAlloc/cuMemFree (each synchronising the device); with it, past and present alternate between
blocks of one class and a step allocates nothing. The cost is up to 2x the bytes of a tensor.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DeviceError

MIN_BLOCK = 256  # bytes: never a null pointer, even for an empty tensor (an empty history)


def _driver() -> Any:
    try:
        from cuda.bindings import driver
    except ImportError:
        raise DeviceError("the TensorRT backend needs cuda-bindings: pip install 'covo-edge[tensorrt]' "
                          "(cuda-bindings matching your CUDA major version)") from None
    return driver


def _call(result: Any) -> Any:
    """A driver call's (CUresult, values...) -> the values, or DeviceError with CUDA's error name."""
    driver = _driver()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(err)
        raise DeviceError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class Gpu:
    ordinal: int
    name: str
    compute_capability: str  # "8.9"
    memory_bytes: int


def probe(ordinal: int = 0) -> Gpu | str:
    """This machine's GPU, or why there is none usable (no cuda-bindings, no driver, no device). Never
    touches TensorRT: creating a TensorRT runtime without a GPU crashes the process, so ask here first."""
    try:
        driver = _driver()
        _call(driver.cuInit(0))
        count = _call(driver.cuDeviceGetCount())
        if count <= ordinal:
            return f"no CUDA GPU {ordinal} (the driver sees {count})"
        dev = _call(driver.cuDeviceGet(ordinal))
        attr = driver.CUdevice_attribute
        major = _call(driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev))
        minor = _call(driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev))
        name = _call(driver.cuDeviceGetName(256, dev))
        memory = _call(driver.cuDeviceTotalMem(dev))
    except DeviceError as e:
        return str(e)
    except Exception as e:  # cuda-bindings raises its own types when libcuda.so cannot be loaded
        return f"no NVIDIA driver ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return Gpu(ordinal, name.split(b"\0")[0].decode(errors="replace"), f"{major}.{minor}", int(memory))


class DeviceArray:
    """A tensor in device memory: what a backend hands back for outputs that stay on the GPU (the KV
    cache, decode-step embeddings), fed back in as is. Its block returns to the pool when it is dropped."""

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype, owner: Any):
        self.ptr = ptr
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self._owner = owner  # the pool block; released by its finalizer

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"DeviceArray({list(self.shape)}, {self.dtype}, 0x{self.ptr:x})"


def size_class(nbytes: int) -> int:
    return max(MIN_BLOCK, 1 << (max(nbytes, 1) - 1).bit_length())


class _Block:
    def __init__(self, ptr: int, size: int):
        self.ptr, self.size = ptr, size


class Cuda:
    """One GPU's primary context, one stream and the memory pool."""

    def __init__(self, ordinal: int = 0):
        driver = _driver()
        _call(driver.cuInit(0))
        self.device = _call(driver.cuDeviceGet(ordinal))
        self.context = _call(driver.cuDevicePrimaryCtxRetain(self.device))
        _call(driver.cuCtxSetCurrent(self.context))
        self.stream = _call(driver.cuStreamCreate(0))
        self.free: dict[int, list[int]] = {}  # size class -> cached device pointers
        self.allocated = 0  # bytes held from the driver (in use or cached)

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> DeviceArray:
        dtype = np.dtype(dtype)
        size = size_class(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        cached = self.free.setdefault(size, [])
        if cached:
            ptr = cached.pop()
        else:
            ptr = int(_call(_driver().cuMemAlloc(size)))
            self.allocated += size
        block = _Block(ptr, size)
        weakref.finalize(block, cached.append, ptr)  # back to the pool when the array goes
        return DeviceArray(ptr, tuple(shape), dtype, block)

    def to_device(self, array: np.ndarray) -> DeviceArray:
        host = np.ascontiguousarray(array)
        out = self.empty(host.shape, host.dtype)
        if host.nbytes:
            # From pageable memory the call returns once the bytes are staged: `host` may go when we return.
            _call(_driver().cuMemcpyHtoDAsync(out.ptr, host.ctypes.data, host.nbytes, self.stream))
        return out

    def to_host(self, array: DeviceArray) -> np.ndarray:
        """Waits for the stream: everything queued before, the copy included, is done on return."""
        host = np.empty(array.shape, array.dtype)
        if host.nbytes:
            _call(_driver().cuMemcpyDtoHAsync(host.ctypes.data, array.ptr, host.nbytes, self.stream))
        self.synchronize()
        return host

    def synchronize(self) -> None:
        _call(_driver().cuStreamSynchronize(self.stream))

    def trim(self) -> int:
        """Give the cached (unused) blocks back to the driver; the bytes freed."""
        self.synchronize()
        freed = 0
        for size, ptrs in self.free.items():
            while ptrs:
                _call(_driver().cuMemFree(ptrs.pop()))
                freed += size
        self.allocated -= freed
        return freed
