"""The comparison metrics of SPEC section 4, defined once for every rule."""

from __future__ import annotations

import numpy as np

__all__ = ["cosine", "angle_deg", "relative_error", "relative_error_trace", "convergence_time"]


def cosine(g: np.ndarray, g_star: np.ndarray) -> float:
    """Cosine between two flattened arrays, clipped to [-1, 1].

    Returns NaN when either vector is zero (the angle is undefined).
    """
    g, g_star = _unit_scaled(g), _unit_scaled(g_star)
    norm = np.linalg.norm(g) * np.linalg.norm(g_star)
    if norm == 0.0 or not np.isfinite(norm):
        return float("nan")
    return float(np.clip(np.dot(g, g_star) / norm, -1.0, 1.0))


def _unit_scaled(v: np.ndarray) -> np.ndarray:
    """``v`` divided by its largest magnitude, so norms of huge vectors cannot overflow."""
    v = np.ravel(np.asarray(v, dtype=np.float64))
    scale = np.max(np.abs(v)) if v.size else 0.0
    return v / scale if np.isfinite(scale) and scale > 0 else v


def angle_deg(g: np.ndarray, g_star: np.ndarray) -> float:
    """Angle in degrees between ``g`` and the reference ``g_star`` (NaN if either is zero).

    Computed as ``2 atan2(|u - v|, |u + v|)`` of the unit vectors, which stays
    accurate for tiny angles, where ``arccos`` of a float64 cosine bottoms
    out near 1e-6 degrees (the regime of a converged relaxation).
    """
    u, v = _unit_scaled(g), _unit_scaled(g_star)
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu == 0.0 or nv == 0.0 or not np.isfinite(nu * nv):
        return float("nan")
    u, v = u / nu, v / nv
    return float(np.degrees(2.0 * np.arctan2(np.linalg.norm(u - v), np.linalg.norm(u + v))))


def relative_error(g: np.ndarray, g_star: np.ndarray) -> float:
    """``|g - g*| / |g*|`` over the flattened arrays (inf if ``g* = 0 != g``)."""
    g, g_star = np.ravel(g), np.ravel(g_star)
    # scale first so that huge but finite vectors do not overflow the norms
    scale = np.max(np.abs(g_star)) if g_star.size else 0.0
    scale = scale if np.isfinite(scale) and scale > 0 else 1.0
    ref = np.linalg.norm(g_star / scale)
    diff = np.linalg.norm((g - g_star) / scale)
    if ref == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return float(diff / ref)


def relative_error_trace(trace: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Relative error of every row of ``trace`` (time x units) against ``target``."""
    trace = np.asarray(trace, dtype=np.float64)
    target = np.ravel(target)
    scale = np.max(np.abs(target)) if target.size else 0.0
    scale = scale if np.isfinite(scale) and scale > 0 else 1.0
    ref = np.linalg.norm(target / scale)
    diff = np.linalg.norm((trace - target[None, :]) / scale, axis=1)
    if ref == 0.0:
        return np.where(diff == 0.0, 0.0, np.inf)
    return diff / ref


def convergence_time(times: np.ndarray, errors: np.ndarray, threshold: float = 1e-3) -> float:
    """First time after which ``errors`` stays below ``threshold``.

    Parameters
    ----------
    times : ndarray
        Record times (e.g. in units of tau), increasing.
    errors : ndarray
        Relative error at each record time.
    threshold : float
        Convergence threshold (SPEC section 4 default 1e-3).

    Returns
    -------
    float
        ``times[k]`` for the smallest ``k`` with ``errors[k:] < threshold``;
        ``inf`` if the last recorded error is not below the threshold.
    """
    errors = np.asarray(errors)
    above = np.nonzero(~(errors < threshold))[0]
    if above.size == 0:
        return float(times[0])
    last = above[-1]
    if last == len(errors) - 1:
        return float("inf")
    return float(times[last + 1])
