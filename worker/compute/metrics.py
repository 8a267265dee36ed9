"""Prometheus metrics of compute jobs (default registry, module-level objects)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS = Counter("gpumesh_compute_jobs_total", "Compute jobs run by this worker, by outcome "
               "(ok, spec_error, build_error, time_limit, kernel_error, memory_error, device_error, cancelled, "
               "error)", ["outcome"])
BUILD_CACHE_HITS = Counter("gpumesh_compute_build_cache_hits_total",
                           "Compute programs found already built (or already known to fail)")
BUILD_CACHE_MISSES = Counter("gpumesh_compute_build_cache_misses_total", "Compute programs compiled")
BUILD_SECONDS = Histogram("gpumesh_compute_build_seconds", "Time to compile a compute program (successful builds)",
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
KERNEL_SECONDS = Histogram("gpumesh_compute_kernel_seconds",
                           "Device time of a compute job's kernels (sum over its launches, from OpenCL profiling)",
                           buckets=(1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600))
BYTES_IN = Counter("gpumesh_compute_bytes_in_total", "Bytes uploaded to devices for compute jobs")
BYTES_OUT = Counter("gpumesh_compute_bytes_out_total", "Bytes read back from devices for compute jobs")
LAUNCHES = Counter("gpumesh_compute_launches_total", "Kernel launches enqueued for compute jobs")
QUARANTINED = Gauge("gpumesh_compute_quarantined_devices",
                    "Devices quarantined because a kernel of a failed or cancelled job still runs on them")
QUARANTINES = Counter("gpumesh_compute_quarantines_total",
                      "Times a device was quarantined (a job failed or was cancelled with a kernel in flight)")
