"""Using a frame in an AR compositor: frames are premultiplied-alpha sRGB8 with view depth in metres.

- `composite_over(frame, photo)`: the frame laid over a camera image (sRGB8 RGB), in linear light:
  `out = frame + photo * (1 - alpha)` (premultiplied "over"), then sRGB-encoded.
- `straight_alpha(frame)`: the same pixels with straight alpha (what PNG files and most image viewers
  expect); exact where alpha is 255 or 0, within a code elsewhere except at very low alpha.
- `openxr_depth(depth, near, far)`: view depth in metres -> the [0, 1] depth of a standard (not reversed)
  perspective projection with that near and far plane, what an OpenXR `XrCompositionLayerDepthInfoKHR` with
  `minDepth = 0, maxDepth = 1, nearZ = near, farZ = far` describes. `+inf` (nothing hit) maps to 1.0.

Pure numpy; see docs/scene-format.md ("Output" and "Compositing in AR").
"""

from __future__ import annotations

import numpy as np

from worker.render.reference import encode_srgb8, srgb_to_linear


def composite_over(frame: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 sRGB: the premultiplied frame (h, w, 4) over the photo (h, w, 3 or 4, sRGB8)."""
    if frame.shape[:2] != photo.shape[:2]:
        raise ValueError(f"frame {frame.shape[:2]} and photo {photo.shape[:2]} differ in size")
    a = frame[..., 3:4].astype(np.float64) / 255.0
    lin = srgb_to_linear(frame[..., :3]) + srgb_to_linear(photo[..., :3]) * (1.0 - a)
    return encode_srgb8(lin)


def straight_alpha(frame: np.ndarray) -> np.ndarray:
    """(h, w, 4) uint8: a premultiplied frame with straight alpha (colour divided by alpha in linear light)."""
    a = frame[..., 3:4].astype(np.float64) / 255.0
    lin = srgb_to_linear(frame[..., :3])
    out = np.empty_like(frame)
    out[..., :3] = encode_srgb8(np.where(a > 0, lin / np.where(a > 0, a, 1.0), 0.0))
    out[..., 3] = frame[..., 3]
    return out


def openxr_depth(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """(h, w) float32 in [0, 1]: window depth of view depth z (metres) for a projection with these planes,
    `far * (z - near) / (z * (far - near))`; z <= near -> 0, z >= far or +inf -> 1."""
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    z = np.asarray(depth, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(np.isfinite(z), far * (z - near) / (z * (far - near)), 1.0)
    return np.clip(d, 0.0, 1.0).astype(np.float32)


def view_depth(window_depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """The inverse of openxr_depth for d < 1 (metres); d = 1 gives +inf."""
    d = np.asarray(window_depth, np.float64)
    with np.errstate(divide="ignore"):
        z = np.where(d < 1.0, far * near / (far - d * (far - near)), np.inf)
    return z.astype(np.float32)
