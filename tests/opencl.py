"""Shared by the tests that need a real OpenCL device (PoCL's CPU device everywhere `make test` installs it)."""

import pytest


def has_opencl() -> bool:
    try:
        import pyopencl as cl

        return any(p.get_devices() for p in cl.get_platforms())
    except Exception:
        return False


requires_opencl = pytest.mark.skipif(not has_opencl(), reason="no OpenCL device (install pocl-binary-distribution)")
