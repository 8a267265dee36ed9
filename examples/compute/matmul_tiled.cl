/* Tiled float32 matrix multiply C = A * B, row-major: A is M x K, B is K x N, C is M x N.
 *
 * Each work-group computes a TS x TS tile of C. The K dimension is walked in TS-wide steps: the work-group
 * copies one TS x TS tile of A and one of B into local memory, synchronises, and accumulates from there,
 * so every element of A and B is read from global memory M/TS + N/TS times instead of N + M times.
 * Each work item computes WPT outputs of one column of the tile (rows ty, ty + RTS, ...), keeping WPT
 * accumulators in registers: a work-group is TS x (TS / WPT) work items.
 *
 * Launch: global = (ceil(N / TS) * TS, ceil(M / TS) * TS / WPT), local = (TS, TS / WPT).
 * Any M, N, K work: tiles hanging over an edge are padded with zeros and their extra outputs are not stored.
 * Build options: -DTS=32 -DWPT=8 (defaults); TS must be a multiple of WPT.
 */
#ifndef TS
#define TS 32
#endif
#ifndef WPT
#define WPT 8
#endif
#define RTS (TS / WPT)

__kernel __attribute__((reqd_work_group_size(TS, RTS, 1)))
void matmul(const int M, const int N, const int K,
            __global const float *A, __global const float *B, __global float *C)
{
    const int tx = get_local_id(0);             /* column within the tile: 0 .. TS-1 */
    const int ty = get_local_id(1);             /* first row within the tile: 0 .. RTS-1 */
    const int col = get_group_id(0) * TS + tx;  /* column of C */
    const int row0 = get_group_id(1) * TS;      /* first row of the tile */

    __local float Asub[TS][TS];
    __local float Bsub[TS][TS];

    float acc[WPT];
    for (int w = 0; w < WPT; w++)
        acc[w] = 0.0f;

    const int tiles = (K + TS - 1) / TS;
    for (int t = 0; t < tiles; t++) {
        const int k0 = t * TS;
        for (int w = 0; w < WPT; w++) {
            const int r = ty + w * RTS;
            const int arow = row0 + r, acol = k0 + tx;
            Asub[r][tx] = (arow < M && acol < K) ? A[arow * K + acol] : 0.0f;
            const int brow = k0 + r;
            Bsub[r][tx] = (brow < K && col < N) ? B[brow * N + col] : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int k = 0; k < TS; k++) {
            const float b = Bsub[k][tx];
            for (int w = 0; w < WPT; w++)
                acc[w] += Asub[ty + w * RTS][k] * b;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (col < N) {
        for (int w = 0; w < WPT; w++) {
            const int row = row0 + ty + w * RTS;
            if (row < M)
                C[row * N + col] = acc[w];
        }
    }
}
