/* Tiled float32 matrix multiply C = A * B, row-major: A is M x K, B is K x N, C is M x N.
 *
 * Each work-group computes one TS x TS tile of C. It walks K in steps of TS: the work-group copies a
 * TS x TS tile of A and one of B into local memory (a cooperative load, 8 floats per vector load),
 * synchronises, then every work item accumulates its own WPT x 8 block of the C tile from local memory:
 * WPT rows, 8 adjacent columns held in one float8 each (register blocking: each value read from local
 * memory feeds 8 or WPT multiply-adds). Global memory traffic drops by a factor of TS against the naive
 * kernel; local memory traffic by the register block.
 *
 * Work-group: (TS / 8) x (TS / WPT) work items. Launch:
 *   global = (ceil(N / TS) * TS / 8, ceil(M / TS) * TS / WPT), local = (TS / 8, TS / WPT).
 * Any M, N, K: tiles over an edge are zero-padded and the outputs outside C are not stored.
 * Build options: -DTS=32 -DWPT=8 (defaults); TS a multiple of 8 and of WPT; -cl-mad-enable recommended.
 * (Plain `a * b + c` rather than mad(): PoCL lowers the mad() builtin poorly, the contracted form well.)
 */
#ifndef TS
#define TS 32
#endif
#ifndef WPT
#define WPT 8
#endif
#define VW 8
#define LX (TS / VW)
#define LY (TS / WPT)

__kernel __attribute__((reqd_work_group_size(LX, LY, 1)))
void matmul(const int M, const int N, const int K,
            __global const float *A, __global const float *B, __global float *C)
{
    const int tx = get_local_id(0), ty = get_local_id(1);
    const int col0 = get_group_id(0) * TS, row0 = get_group_id(1) * TS;
    const int lid = ty * LX + tx;

    __local float Asub[TS][TS];
    __local float Bsub[TS][TS];

    float8 acc[WPT];
    for (int w = 0; w < WPT; w++)
        acc[w] = (float8)(0.0f);

    const bool full_m = row0 + TS <= M, full_n = col0 + TS <= N;
    for (int k0 = 0; k0 < K; k0 += TS) {
        const bool full_k = k0 + TS <= K;
        /* cooperative load of both tiles: TS*TS/8 vectors each, shared by the LX*LY work items */
        for (int v = lid; v < TS * TS / VW; v += LX * LY) {
            const int r = v / (TS / VW), c = (v % (TS / VW)) * VW;
            if (full_m && full_k) {
                vstore8(vload8(0, A + (size_t)(row0 + r) * K + k0 + c), 0, &Asub[r][c]);
            } else {
                for (int e = 0; e < VW; e++)
                    Asub[r][c + e] = (row0 + r < M && k0 + c + e < K) ? A[(size_t)(row0 + r) * K + k0 + c + e] : 0.0f;
            }
            if (full_k && full_n) {
                vstore8(vload8(0, B + (size_t)(k0 + r) * N + col0 + c), 0, &Bsub[r][c]);
            } else {
                for (int e = 0; e < VW; e++)
                    Bsub[r][c + e] = (k0 + r < K && col0 + c + e < N) ? B[(size_t)(k0 + r) * N + col0 + c + e] : 0.0f;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int k = 0; k < TS; k++) {
            const float8 b = vload8(0, &Bsub[k][tx * VW]);
            for (int w = 0; w < WPT; w++)
                acc[w] += Asub[ty * WPT + w][k] * b;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    const int col = col0 + tx * VW;
    for (int w = 0; w < WPT; w++) {
        const int row = row0 + ty * WPT + w;
        if (row >= M)
            break;
        if (col + VW <= N) {
            vstore8(acc[w], 0, C + (size_t)row * N + col);
        } else {
            float tail[VW];
            vstore8(acc[w], 0, tail);
            for (int e = 0; e < VW && col + e < N; e++)
                C[(size_t)row * N + col + e] = tail[e];
        }
    }
}
