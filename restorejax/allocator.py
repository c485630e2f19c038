"""Host memory for XLA:CPU: keep freed memory in the process instead of returning it to the kernel.

XLA:CPU allocates every buffer of a step afresh (a NAFNet train step: tens of MB of temporaries) and glibc
serves allocations above its mmap threshold with fresh `mmap`s, unmapped again on free: every step then
pays a page fault per 4 KiB page it touches, which on the 2-core CI machine cost as much as the arithmetic
of the depthwise convolutions' backward pass. `keep_freed_memory()` tells glibc to serve everything from
one heap and never trim it (`mallopt`), so a step reuses the pages of the previous one. One heap (one
arena) matters: XLA's worker threads otherwise allocate from per-thread arenas, which glibc maps and
unmaps outside the main heap's limits, and the step kept paying ~77k page faults (40% of its CPU time in
the kernel on the default config, measured 2026-12-05). Call it before JAX starts its threads. The
process keeps its peak footprint; nothing else changes (same buffers, same maths). A no-op without glibc.
"""

import ctypes
import ctypes.util

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_applied = False


def keep_freed_memory() -> bool:
  """Serve allocations from glibc's heap and keep freed pages; True if glibc accepted it."""
  global _applied  # pylint: disable=global-statement
  if _applied:
    return True
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  ok = all(mallopt(param, value) == 1 for param, value in (
      (M_ARENA_MAX, 1),                # every thread allocates from the main heap, where the rest applies
      (M_MMAP_MAX, 0),                 # no mmap'd chunks: large buffers come from the heap too
      (M_TRIM_THRESHOLD, 2**31 - 1),   # never give the heap's top back
      (M_TOP_PAD, 64 << 20)))          # grow the heap in 64 MiB steps
  _applied = ok
  return ok
