"""Numpy reference of the BurstIF operator: docs/method.md §2, written as the spec reads.

This is the executable specification that the C++ kernel and the standard-op
fallback are tested against, bit for bit. Keep it short and obvious.
"""
from __future__ import annotations

import numpy as np


def burst_if(x: np.ndarray, vth: np.ndarray, T: int, psi: int, tau: float = 1.0):
    """Burst integrate-and-fire over the time-folded batch (docs/method.md §2).

    x: float32 ``[T*N, C, ...]``, time-major (row ``t*N + n``). vth: float32 ``[C]`` or ``[1]``.
    Returns ``(Y, spikes)``: ``Y`` like ``x``; ``spikes`` float32 ``[N]``, the number of
    spikes each sample emitted over all T steps (a burst of k counts k).
    A NaN membrane emits no spike (the clip maps NaN to 0); +inf input fires psi per step.
    """
    x = np.asarray(x, dtype=np.float32)
    vth = np.asarray(vth, dtype=np.float32).reshape(-1)
    if T < 1 or psi < 1 or not tau > 0:
        raise ValueError(f"BurstIF needs T >= 1, psi >= 1, tau > 0; got T={T}, psi={psi}, tau={tau}")
    if x.ndim < 2 or x.shape[0] % T:
        raise ValueError(f"BurstIF: X shape {x.shape}: batch {x.shape[0] if x.ndim else None} is not a multiple of T={T}")
    if vth.size not in (1, x.shape[1]):
        raise ValueError(f"BurstIF: vth has {vth.size} values, X has C={x.shape[1]} channels (need 1 or C)")
    N = x.shape[0] // T
    per_sample = int(np.prod(x.shape[1:], dtype=np.int64))  # explicit: reshape(N, -1) fails when N or C is 0
    xt = x.reshape((T, N) + x.shape[1:])
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    theta = np.float32(tau) * vth.reshape(bshape)          # the threshold the neuron fires at
    fires = theta > 0                                       # theta <= 0: never fires, Y = 0
    theta = np.where(fires, theta, np.float32(1))
    offset = theta / np.float32(2 * T)                      # rounding offset, spread over T
    u = np.zeros_like(xt[0])
    y = np.empty_like(xt)
    spikes = np.zeros(N, dtype=np.float32)
    for t in range(T):
        u = (u + xt[t]) + offset
        q = np.floor(u / theta)
        q = np.where(q > 0, q, np.float32(0))                  # clip(., 0, psi); NaN -> 0
        q = np.where(q > psi, np.float32(psi), q)
        s = np.where(fires, q, np.float32(0)).astype(np.float32)
        st = s * theta
        u = u - st
        y[t] = st
        spikes += s.reshape(N, per_sample).sum(axis=1, dtype=np.float32)
    return y.reshape(x.shape), spikes
