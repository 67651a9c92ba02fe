"""The only place that knows how big a giga is.

Inside moesim everything is seconds, bytes, FLOP and bytes/second. Spec fields carry their unit in
their name (``peak_tflops``, ``hbm_gb_per_s``, ``latency_us``); they are converted once, at load,
with the factors below.
"""

KILO = 1e3
MEGA = 1e6
GIGA = 1e9
TERA = 1e12

KIB = 2**10
MIB = 2**20
GIB = 2**30

US = 1e-6  # seconds per microsecond
MS = 1e-3  # seconds per millisecond

BITS_PER_BYTE = 8


def tflops(value: float) -> float:
    """TFLOP/s -> FLOP/s."""
    return value * TERA


def gb_per_s(value: float) -> float:
    """GB/s (decimal) -> bytes/s."""
    return value * GIGA


def gbit_per_s(value: float) -> float:
    """Gbit/s (network line rates) -> bytes/s."""
    return value * GIGA / BITS_PER_BYTE


def us(value: float) -> float:
    """Microseconds -> seconds."""
    return value * US


def gib(value: float) -> float:
    """GiB -> bytes."""
    return value * GIB


def mb(value: float) -> float:
    """MB (decimal, as DDP's bucket_cap_mb) -> bytes."""
    return value * MEGA


def to_us(seconds: float) -> float:
    """Seconds -> microseconds (Chrome trace timestamps)."""
    return seconds / US
