"""CPU memory pages: glibc's heap kept like CUDA's caching allocator, and the fresh pages a step faults in."""
import ctypes
import ctypes.util
import resource
from typing import Any, Callable, Tuple

__all__ = ['cache_freed_memory', 'with_page_faults', 'STEADY_PAGE_FAULTS']


def cache_freed_memory() -> bool:
    """Keep freed blocks in glibc's heap instead of returning them to the OS; False if not glibc.

    Every block comes from the heap (no mmap, which would unmap large tensors on free and fault
    them in again on the next step) and the heap is never trimmed.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c'))
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))
    except (OSError, AttributeError):
        return False


#: A warm-up round that faults in fewer fresh pages than this (4 KiB each) is steady state.
STEADY_PAGE_FAULTS = 256


def _minor_page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def with_page_faults(fn: Callable[[], Any]) -> Tuple[Any, int]:
    """``fn()``'s result and the fresh memory pages it faulted in."""
    before = _minor_page_faults()
    result = fn()
    return result, _minor_page_faults() - before
