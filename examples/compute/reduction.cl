/* Sum of a float array in two launches of one kernel: each work-group reduces its part in __local memory
 * (a tree of barriers), writing one partial sum per group; the second launch reduces those partials with a
 * single work-group. The partials live in a device-only scratch buffer, written by the first launch and read
 * by the second through a const pointer.
 */
__kernel void partial_sums(const uint n, __global const float *x, __global float *partial,
                           __local float *scratch)
{
    const uint lid = get_local_id(0);
    const uint stride = get_global_size(0);
    float acc = 0.0f;
    for (uint i = get_global_id(0); i < n; i += stride)
        acc += x[i];
    scratch[lid] = acc;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = get_local_size(0) / 2; s > 0; s >>= 1) {
        if (lid < s)
            scratch[lid] += scratch[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0)
        partial[get_group_id(0)] = scratch[0];
}
