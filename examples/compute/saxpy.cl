/* SAXPY: y <- a * x + y (single precision), one work item per element.
   The global size may be rounded up to a multiple of the work-group size: items past n do nothing. */
__kernel void saxpy(const uint n, const float a, __global const float *x, __global float *y)
{
    const size_t i = get_global_id(0);
    if (i < n)
        y[i] = a * x[i] + y[i];
}
