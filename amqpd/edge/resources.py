"""Resource alarms: the process's memory against the high watermark and the free disk space of
the data directory against the free-space limit, measured on a timer by the edge's server.

Memory is the resident set size (RSS) of the broker process, as RabbitMQ's default
``vm_memory_calculation_strategy = rss``; the machine's memory is the smaller of physical RAM
and the cgroup limit, so a container's limit counts. No I/O edge here: ``check()`` measures and
returns the alarms in force; ``amqp/flow.py`` decides who is blocked.
"""
import ctypes
import ctypes.util
import logging
import os
import resource

log = logging.getLogger("amqpd.alarms")

MEMORY, DISK = "memory", "disk"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_rss() -> int:
    """Current resident set size in bytes."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        # Not Linux: the peak is the best the standard library offers (kB on Linux/BSD,
        # bytes on macOS).
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024


def total_memory() -> int:
    """Physical memory, or the cgroup's memory limit when that is lower."""
    total = 0
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = int(text)
            if 0 < limit < (total or limit + 1):
                total = limit
    return total


def disk_free(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _malloc_trim():
    """glibc keeps freed memory in the heap; after a backlog drains, give it back so RSS falls
    below the watermark again (without this, fragmentation can hold an alarm on forever)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    return lambda: fn(0)


class ResourceMonitor:
    def __init__(self, resources, data_dir: str | None):
        self.data_dir = data_dir        # None: a memory-only broker has no disk to watch
        watermark = resources.memory_high_watermark
        self.total = total_memory()
        if isinstance(watermark, float):
            self.memory_limit = int(self.total * watermark)
        else:
            self.memory_limit = int(watermark)
        # above this, transient messages beyond a queue's window are paged out (to disk)
        self.paging_limit = int(self.memory_limit * resources.memory_high_watermark_paging_ratio)
        self.paging = self.paging_limit <= 0
        self.disk_free_limit = int(resources.disk_free_limit) if data_dir else 0
        self.alarms: set = set()
        self.memory = 0
        self.free = None
        self._trim = _malloc_trim()

    def describe(self) -> str:
        disk = (f"disk free limit {self.disk_free_limit / 1e6:.1f} MB" if self.data_dir
                else "no disk (memory only)")
        return (f"memory high watermark {self.memory_limit / 1e6:.1f} MB (of "
                f"{self.total / 1e6:.0f} MB), {disk}")

    def disk_headroom(self) -> int | None:
        """Bytes that may still be written before the disk alarm is due, as last measured;
        None when the disk is not watched or its alarm is already in force."""
        if not self.disk_free_limit or self.free is None or DISK in self.alarms:
            return None
        return max(self.free - self.disk_free_limit, 0)

    def check(self) -> set:
        """Measure and return the alarms in force ({'memory', 'disk'} or a subset)."""
        if MEMORY in self.alarms and self._trim is not None:
            self._trim()
        self.memory = process_rss()
        alarms = set()
        paging = self.memory >= self.paging_limit
        if paging != self.paging:
            log.info("memory use %.1f MB is %s the paging threshold %.1f MB: transient messages "
                     "beyond a queue's window %s", self.memory / 1e6,
                     "above" if paging else "below", self.paging_limit / 1e6,
                     "go to disk" if paging else "stay in RAM")
            self.paging = paging
        if self.memory >= self.memory_limit:
            alarms.add(MEMORY)
        if self.disk_free_limit:
            try:
                self.free = disk_free(self.data_dir)
            except OSError:
                self.free = None
            if self.free is not None and self.free < self.disk_free_limit:
                alarms.add(DISK)
        for kind in alarms - self.alarms:
            if kind == MEMORY:
                log.warning("memory resource limit alarm set: %.1f MB in use, limit %.1f MB. "
                            "Publishers will be blocked until this alarm clears",
                            self.memory / 1e6, self.memory_limit / 1e6)
            else:
                log.warning("disk resource limit alarm set: %.1f MB free in %s, limit %.1f MB. "
                            "Publishers will be blocked until this alarm clears",
                            (self.free or 0) / 1e6, self.data_dir, self.disk_free_limit / 1e6)
        for kind in self.alarms - alarms:
            log.warning("%s resource limit alarm cleared", kind)
        self.alarms = alarms
        return alarms
