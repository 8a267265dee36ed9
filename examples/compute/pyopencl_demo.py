"""pyopencl's own examples/demo.py (element-wise sum of two arrays), ported to gpumesh: five lines changed,
marked `# was:` (docs/compute.md shows the two side by side).

    python examples/compute/pyopencl_demo.py            # on this machine's OpenCL device
    python examples/compute/pyopencl_demo.py --mesh     # through the node running on this machine
"""

import sys

import numpy as np

from worker.compute.api import Out
from worker.compute.program import Program


def main(argv=None, mesh=None):
    argv = sys.argv[1:] if argv is None else argv
    if mesh is None and "--mesh" in argv:
        from scheduler.client.compute_sdk import Mesh

        mesh = Mesh.local()

    rng = np.random.default_rng()
    a_np = rng.random(50000, dtype=np.float32)
    b_np = rng.random(50000, dtype=np.float32)

    queue = mesh  # was: ctx = cl.create_some_context(); queue = cl.CommandQueue(ctx)

    # was: mf = cl.mem_flags; a_g = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=a_np) (and b_g)
    a_g, b_g = a_np, b_np

    prg = (mesh.program if mesh is not None else Program)("""
    __kernel void sum(
        __global const float *a_g, __global const float *b_g, __global float *res_g)
    {
      int gid = get_global_id(0);
      res_g[gid] = a_g[gid] + b_g[gid];
    }
    """).build()  # was: prg = cl.Program(ctx, """...""").build()

    res_g = Out.like(a_np)  # was: res_g = cl.Buffer(ctx, mf.WRITE_ONLY, a_np.nbytes)
    knl = prg.sum  # Use this Kernel object for repeated calls
    res_np = knl(queue, a_np.shape, None, a_g, b_g, res_g)
    # was: knl(queue, ...); res_np = np.empty_like(a_np); cl.enqueue_copy(queue, res_np, res_g)

    # Check on CPU with Numpy:
    print(res_np - (a_np + b_np))
    print(np.linalg.norm(res_np - (a_np + b_np)))
    assert np.allclose(res_np, a_np + b_np)
    return 0


if __name__ == "__main__":
    sys.exit(main())
