/* SGEMM as two launches, after Cedric Nugteren's "Tutorial: OpenCL SGEMM tuning for Kepler" (kernel 5 shape):
 * first transpose B into a device-only scratch buffer, then a tiled GEMM that reads both A and B^T along rows
 * (coalesced on GPUs, sequential on CPUs).
 *
 *   A  [M][K], B [K][N], C [M][N], row-major float32 (numpy's layout); BT [N][K] lives on the device only.
 *
 * Both kernels require TS x TS work-groups (reqd_work_group_size): the global sizes are rounded up to TS and
 * the items past the edge load zeros and store nothing.
 */
#ifndef TS
#define TS 16
#endif

__kernel __attribute__((reqd_work_group_size(TS, TS, 1)))
void transpose(const int rows, const int cols, __global const float *in, __global float *out)
{
    __local float tile[TS][TS + 1];          /* +1: no bank conflicts on the transposed read */
    const int tx = get_local_id(0), ty = get_local_id(1);
    const int c = get_group_id(0) * TS + tx; /* column of in */
    const int r = get_group_id(1) * TS + ty; /* row of in */
    if (r < rows && c < cols)
        tile[ty][tx] = in[r * cols + c];
    barrier(CLK_LOCAL_MEM_FENCE);
    const int oc = get_group_id(1) * TS + tx; /* column of out = row of in */
    const int orow = get_group_id(0) * TS + ty; /* row of out = column of in */
    if (orow < cols && oc < rows)
        out[orow * rows + oc] = tile[tx][ty];
}

__kernel __attribute__((reqd_work_group_size(TS, TS, 1)))
void gemm_nt(const int M, const int N, const int K, __global const float *A, __global const float *BT,
             __global float *C)
{
    __local float As[TS][TS];
    __local float Bs[TS][TS];
    const int tx = get_local_id(0), ty = get_local_id(1);
    const int n = get_group_id(0) * TS + tx;
    const int m = get_group_id(1) * TS + ty;
    const int nb = get_group_id(0) * TS + ty; /* the BT row this item loads */
    float acc = 0.0f;
    for (int t = 0; t < K; t += TS) {
        As[ty][tx] = (m < M && t + tx < K) ? A[m * K + t + tx] : 0.0f;
        Bs[ty][tx] = (nb < N && t + tx < K) ? BT[nb * K + t + tx] : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int k = 0; k < TS; k++)
            acc += As[ty][k] * Bs[tx][k];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (m < M && n < N)
        C[m * N + n] = acc;
}
