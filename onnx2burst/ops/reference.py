"""Numpy reference of the BurstIF operator: docs/method.md §2, written as the spec reads.

This is the executable specification that the C++ kernel and the standard-op
fallback are tested against, bit for bit. Keep it short and obvious.
"""
from __future__ import annotations

import numpy as np


def burst_if(x: np.ndarray, vth: np.ndarray, T: int, psi: int, tau: float = 1.0, alpha=None):
    """Burst integrate-and-fire over the time-folded batch (docs/method.md §2).

    x: float32 ``[T*N, C, ...]``, time-major (row ``t*N + n``). vth: float32 ``[C]`` or ``[1]``.
    alpha: None (no negative spikes) or the negative slope, ``[1]`` or ``[C]`` values >= 0:
    the signed neuron of §2 (LeakyReLU/PReLU), see :func:`_signed`.
    Returns ``(Y, spikes)``: ``Y`` like ``x``; ``spikes`` float32 ``[N]``, the number of
    spikes each sample emitted over all T steps (a burst of k counts k, either sign).
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
    if alpha is not None:
        alpha = np.asarray(alpha, dtype=np.float32).reshape(-1)
        if alpha.size not in (1, x.shape[1]) or not (np.isfinite(alpha).all() and (alpha >= 0).all()):
            raise ValueError(f"BurstIF: alpha must be 1 or C={x.shape[1]} finite values >= 0, got {alpha.tolist()}")
        return _signed(x, vth, int(T), int(psi), np.float32(tau), alpha)
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
        u, y[t], s = _step(u, xt[t], theta, offset, fires, psi)
        spikes += s.reshape(N, per_sample).sum(axis=1, dtype=np.float32)
    return y.reshape(x.shape), spikes


def _step(u, x_t, theta, offset, fires, psi):
    """One timestep of the ReLU neuron: ``(u after the step, Y[t], spikes per neuron)``."""
    u = (u + x_t) + offset
    q = np.floor(u / theta)
    q = np.where(q > 0, q, np.float32(0))                  # clip(., 0, psi); NaN -> 0
    q = np.where(q > psi, np.float32(psi), q)
    s = np.where(fires, q, np.float32(0)).astype(np.float32)
    st = s * theta
    return u - st, st, s


def burst_if_step(x: np.ndarray, u: np.ndarray, vth: np.ndarray, T: int, psi: int, tau: float = 1.0):
    """One timestep of the ReLU neuron of an SNN of ``T`` steps, the state carried by the caller.

    x, u: float32 ``[N, C, ...]`` (this step's input, the membrane before it; zeros at the
    start). Returns ``(Y, spikes [N], u after the step)``, the outputs of the kernel's
    ``BurstIFStep`` in its order. Stepping T times from ``u = 0``
    gives :func:`burst_if` on the T steps stacked, bit for bit.
    """
    x = np.asarray(x, dtype=np.float32)
    u = np.asarray(u, dtype=np.float32)
    vth = np.asarray(vth, dtype=np.float32).reshape(-1)
    if x.ndim < 2 or u.shape != x.shape or vth.size not in (1, x.shape[1]):
        raise ValueError(f"BurstIFStep: X {x.shape}, U {u.shape} (must equal X), vth {vth.size} values (1 or C)")
    theta = np.float32(tau) * vth.reshape((1, -1) + (1,) * (x.ndim - 2))
    fires = theta > 0
    theta = np.where(fires, theta, np.float32(1))
    offset = theta / np.float32(2 * T)
    u, y, s = _step(u, x, theta, offset, fires, psi)
    return y, s.reshape(len(x), -1).sum(axis=1, dtype=np.float32), u


def _signed(x, vth, T, psi, tau, alpha):
    """The signed neuron (alpha > 0 in a channel): negative spikes worth ``-theta`` fire at the
    larger threshold ``theta_n = theta / alpha`` (the imbalanced threshold of Spiking-YOLO), so
    the mean output approximates ``LeakyReLU(mean X)`` with slope alpha. Both signs fire at most
    psi per step and reset by subtraction. The positive side is the ReLU neuron's, unchanged. The
    negative side fires once the true membrane ``v`` (u without the offsets) reaches
    ``-(theta_n - theta/2)`` at the end of the run; ``w`` accumulates ``2 * offset`` per step:

        w = w + (offset + offset)
        sp = clip(floor(u / theta), 0, psi)          (u as in the ReLU neuron)
        sn = clip(floor((w - u) / theta_n), 0, psi)
        u  = (u - sp*theta) + sn*theta_n
        Y  = sp*theta - sn*theta

    After a negative spike ``v <= theta/2``: it never pushes the membrane over the positive
    threshold (a larger negative rounding offset would, and the neuron would then oscillate).
    A channel with alpha = 0 (or theta_n not finite) never fires negative: its Y is the ReLU
    neuron's bit for bit."""
    N = x.shape[0] // T
    per_sample = int(np.prod(x.shape[1:], dtype=np.int64))
    xt = x.reshape((T, N) + x.shape[1:])
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    theta = tau * vth.reshape(bshape)
    fires = theta > 0
    theta = np.where(fires, theta, np.float32(1))
    offset = theta / np.float32(2 * T)
    a = alpha.reshape(bshape)
    with np.errstate(divide="ignore", over="ignore"):
        theta_n = theta / np.where(a > 0, a, np.float32(1))
    neg = fires & (a > 0) & (theta_n <= np.float32(np.finfo(np.float32).max))
    theta_n = np.where(neg, theta_n, np.float32(1)).astype(np.float32)
    step_w = offset + offset
    psi_f = np.float32(psi)
    u = np.zeros_like(xt[0])
    w = np.zeros_like(step_w)
    y = np.empty_like(xt)
    spikes = np.zeros(N, dtype=np.float32)
    for t in range(T):
        u = (u + xt[t]) + offset
        w = w + step_w
        sp = np.floor(u / theta)
        sp = np.where(sp > 0, sp, np.float32(0))
        sp = np.where(sp > psi_f, psi_f, sp)
        sp = np.where(fires, sp, np.float32(0)).astype(np.float32)
        sn = np.floor((w - u) / theta_n)
        sn = np.where(sn > 0, sn, np.float32(0))
        sn = np.where(sn > psi_f, psi_f, sn)
        sn = np.where(neg, sn, np.float32(0)).astype(np.float32)
        yp = sp * theta
        u = (u - yp) + sn * theta_n
        y[t] = yp - sn * theta
        spikes += (sp + sn).reshape(N, per_sample).sum(axis=1, dtype=np.float32)
    return y.reshape(x.shape), spikes
