/* Image convolution on RGBA pixels: a (2r+1) x (2r+1) float filter in __constant memory, edges clamped, each
 * channel scaled by a float4 gain passed by value. The pixels are a plain __global uchar4 buffer (one per
 * pixel, row-major): a kernel written for image2d_t + sampler_t (CLK_ADDRESS_CLAMP_TO_EDGE) ports to this by
 * replacing read_imageui/read_imagef with the clamped index below.
 */
__kernel void convolve(__global const uchar4 *img, __constant float *filt, __global float4 *out,
                       const int width, const int height, const int radius, const float4 gain)
{
    const int x = get_global_id(0), y = get_global_id(1);
    if (x >= width || y >= height)
        return;
    const int size = 2 * radius + 1;
    float4 acc = (float4)(0.0f);
    for (int dy = -radius; dy <= radius; dy++) {
        const int yy = clamp(y + dy, 0, height - 1);
        for (int dx = -radius; dx <= radius; dx++) {
            const int xx = clamp(x + dx, 0, width - 1);
            acc += convert_float4(img[yy * width + xx]) * filt[(dy + radius) * size + dx + radius];
        }
    }
    out[y * width + x] = acc * gain;
}
