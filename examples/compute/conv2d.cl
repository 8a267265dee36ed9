/* 2D convolution layer (as in PyTorch's Conv2d: cross-correlation), float32, NCHW layout.
 *
 *   input  [N][C][H][W]
 *   weight [K][C][R][S]      (K output channels, R x S filter)
 *   bias   [K]
 *   output [N][K][P][Q]      P = (H + 2*pad - R) / stride + 1, Q = (W + 2*pad - S) / stride + 1
 *
 * out[n][k][p][q] = bias[k] + sum_{c,r,s} in[n][c][p*stride - pad + r][q*stride - pad + s] * weight[k][c][r][s]
 * (input positions outside the image count as zero), then max(0, .) when relu != 0.
 *
 * One work item per output element: global = (Q', P', N * K) with Q' >= Q, P' >= P rounded up to the
 * work-group size; items outside the output do nothing.
 */
__kernel void conv2d(__global const float *in, __global const float *weight, __global const float *bias,
                     __global float *out,
                     const int N, const int C, const int H, const int W,
                     const int K, const int R, const int S,
                     const int P, const int Q, const int stride, const int pad, const int relu)
{
    const int q = get_global_id(0);
    const int p = get_global_id(1);
    const int nk = get_global_id(2);
    if (q >= Q || p >= P || nk >= N * K)
        return;
    const int n = nk / K, k = nk % K;
    const int h0 = p * stride - pad, w0 = q * stride - pad;

    float acc = bias[k];
    for (int c = 0; c < C; c++) {
        __global const float *img = in + ((size_t)(n * C + c) * H) * W;
        __global const float *flt = weight + ((size_t)(k * C + c) * R) * S;
        for (int r = 0; r < R; r++) {
            const int h = h0 + r;
            if (h < 0 || h >= H)
                continue;
            for (int s = 0; s < S; s++) {
                const int w = w0 + s;
                if (w >= 0 && w < W)
                    acc += img[h * W + w] * flt[r * S + s];
            }
        }
    }
    if (relu && acc < 0.0f)
        acc = 0.0f;
    out[((size_t)(n * K + k) * P + p) * Q + q] = acc;
}
