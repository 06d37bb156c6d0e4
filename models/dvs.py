"""A simulated DVS (event camera) and the "fmnist-dvs" event version of Fashion-MNIST.

The dataset is made the way N-MNIST (Orchard et al. 2015) and CIFAR10-DVS were made:
a static image is moved in front of an event sensor along three saccades (a triangle,
100 ms each), and the sensor emits an event (x, y, t, p) each time the log intensity
of a pixel moves by a contrast threshold from the level the pixel last reset to.

Simulator (all vectorised in numpy over a batch of images and all pixels):

- Rendering. The 28x28 image sits at offset (3, 3) of a 34x34 sensor (as in N-MNIST)
  over a black background, and is shifted by the saccade displacement (dx, dy) at
  time t. Each sensor pixel takes the bilinear interpolation of the zero-padded
  image at its shifted position: for a piecewise-constant image this is exactly the
  light integrated over a 1x1 pixel aperture, so sub-pixel motion is smooth.
- Log intensity: ``L = ln(pixel/255 + dark)``; ``dark`` is the black level of the
  display (0 -> dark, 255 -> 1 + dark).
- Time steps of ``dt_us`` (1 ms). Within a step ``L`` is linear in time between the
  frames at the step's ends, so threshold crossings are given sub-step timestamps.
- Per-pixel contrast thresholds ``C_on``, ``C_off`` with Gaussian mismatch (a fixed
  map per simulated sensor, ``sensor_seed``; the same sensor records train and test).
- A pixel fires ON (OFF) when ``L - ref >= C_on`` (``ref - L >= C_off``). With no
  refractory period the reference moves by one threshold per event, so a step whose
  change spans k thresholds gives k events at their interpolated crossing times.
- Refractory period ``refractory_us``: after an event the pixel is held in reset, its
  reference follows ``L`` and it cannot fire; the reference is ``L`` at the end of
  the reset. Changes during the reset are lost, as in a real DVS pixel.
- Background activity: Poisson noise events at ``noise_hz`` per pixel, random
  polarity; they reset the pixel like real events and respect the refractory period.

Events are returned sorted by (sample, t); ``t`` in integer microseconds, ``p`` = 1
for ON and 0 for OFF. Single streams use the tonic-style structured dtype
:data:`EVENT_DTYPE` (fields x, y, t, p).

Voxel grid (docs/method.md section 9): B time bins x 2 polarities = 2B channels,
channel ``p*B + b`` (OFF bins first, then ON bins, the layout of the authors' code).
Each event adds 1 to its (polarity, bin, y, x) cell, so the grid's total mass is the
number of events. Bins split the recording window ``[t_start, t_end]`` evenly (for
fmnist-dvs the fixed 300 ms of the three saccades, so bin b covers 33.3 ms and every
saccade is 3 bins); without a window, the first and last event times of the stream,
like the authors' per-sample normalisation.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
CACHE_DIR = Path(__file__).resolve().parent / "cache" / "fmnist_dvs"
N_BINS = 9

# N-MNIST-style triangle (x, y) in pixels, y pointing down: bottom-left -> top ->
# bottom-right -> back. Closed: the last vertex equals the first.
TRIANGLE = ((-3.0, 2.5), (0.0, -2.5), (3.0, 2.5), (-3.0, 2.5))


@dataclass(frozen=True)
class DVSParams:
    """Parameters of the simulated sensor and of the saccades (see the module doc)."""
    sensor: int = 34                   # sensor is sensor x sensor pixels
    image_offset: float = 3.0          # image top-left on the sensor at zero displacement
    vertices: tuple = TRIANGLE         # saccade path vertices (dx, dy) in pixels
    saccade_ms: float = 100.0          # duration of each segment of the path
    dt_us: int = 1000                  # simulation time step
    dark: float = 0.1                  # L = ln(pixel/255 + dark)
    threshold_on: float = 0.30         # nominal ON contrast threshold (log units)
    threshold_off: float = 0.30        # nominal OFF contrast threshold
    threshold_sigma: float = 0.03      # std of the per-pixel threshold mismatch (log units)
    threshold_min: float = 0.05        # thresholds are clipped below at this value
    refractory_us: float = 500.0       # per-pixel refractory period
    noise_hz: float = 0.2              # background-activity rate per pixel (both polarities)
    sensor_seed: int = 0               # seed of the threshold mismatch map
    max_events_per_step: int = 32      # per pixel and step (safety cap; carried over)

    @property
    def duration_us(self) -> int:
        return int(round((len(self.vertices) - 1) * self.saccade_ms * 1000))

    @property
    def n_steps(self) -> int:
        return int(round(self.duration_us / self.dt_us))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, s: str) -> "DVSParams":
        d = json.loads(s)
        d["vertices"] = tuple(tuple(v) for v in d["vertices"])
        return cls(**d)


def saccade_displacement(params: DVSParams, t_us) -> np.ndarray:
    """(dx, dy) of the image at times ``t_us`` (piecewise linear through the vertices,
    each segment ``saccade_ms`` long). Returns [len(t), 2]."""
    t = np.atleast_1d(np.asarray(t_us, dtype=np.float64))
    v = np.asarray(params.vertices, dtype=np.float64)
    knots = np.arange(len(v)) * params.saccade_ms * 1000.0
    return np.stack([np.interp(t, knots, v[:, 0]), np.interp(t, knots, v[:, 1])], axis=1)


def threshold_maps(params: DVSParams) -> tuple[np.ndarray, np.ndarray]:
    """The per-pixel (ON, OFF) threshold maps [H, W] float32 of the sensor."""
    rng = np.random.default_rng([params.sensor_seed, 0xD75])
    shape = (params.sensor, params.sensor)
    on = params.threshold_on + params.threshold_sigma * rng.standard_normal(shape)
    off = params.threshold_off + params.threshold_sigma * rng.standard_normal(shape)
    lo = params.threshold_min
    return np.maximum(on, lo).astype(np.float32), np.maximum(off, lo).astype(np.float32)


class Renderer:
    """Log intensity seen by the sensor for a batch of images at a given displacement."""

    PAD = 10

    def __init__(self, images_u8: np.ndarray, params: DVSParams):
        imgs = np.asarray(images_u8)
        if imgs.ndim == 2:
            imgs = imgs[None]
        n, h, w = imgs.shape
        p = self.PAD
        self.canvas = np.zeros((n, h + 2 * p, w + 2 * p), np.float32)
        self.canvas[:, p:p + h, p:p + w] = imgs.astype(np.float32) / np.float32(255.0)
        self.params = params
        self.n = n

    def intensity(self, dx: float, dy: float) -> np.ndarray:
        """Linear intensity [N, S, S]: sensor pixel (r, c) sees the image at
        (r - offset - dy, c - offset - dx), bilinearly interpolated."""
        s, p = self.params.sensor, self.PAD
        by = p - self.params.image_offset - dy
        bx = p - self.params.image_offset - dx
        iy, ix = int(np.floor(by)), int(np.floor(bx))
        fy, fx = np.float32(by - iy), np.float32(bx - ix)
        hc, wc = self.canvas.shape[1:]
        if iy < 0 or ix < 0 or iy + s + 1 > hc or ix + s + 1 > wc:
            raise ValueError(f"displacement ({dx}, {dy}) moves the image off the padded canvas")
        c = self.canvas
        a = c[:, iy:iy + s, ix:ix + s]
        b = c[:, iy:iy + s, ix + 1:ix + s + 1]
        d = c[:, iy + 1:iy + s + 1, ix:ix + s]
        e = c[:, iy + 1:iy + s + 1, ix + 1:ix + s + 1]
        return ((1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * d + fx * e))

    def log_intensity(self, dx: float, dy: float) -> np.ndarray:
        return np.log(self.intensity(dx, dy) + np.float32(self.params.dark))


class DVSSensor:
    """Event generation for ``m`` independent pixels (a flattened batch of sensors).

    ``step(L1, t0, t1)`` advances from the last log-intensity frame (at ``t0``) to
    ``L1`` (at ``t1``) and returns the events of the step as (pixel index, time in
    microseconds as float64, is_on)."""

    def __init__(self, L0: np.ndarray, thr_on: np.ndarray, thr_off: np.ndarray,
                 refractory_us: float = 0.0, noise_hz: float = 0.0,
                 rng: np.random.Generator | None = None, max_events_per_step: int = 32):
        self.L = np.ascontiguousarray(L0, dtype=np.float32).ravel().copy()
        m = self.L.size
        self.ref = self.L.copy()                       # reference log intensity
        self.t_avail = np.full(m, -np.inf)             # end of the refractory period
        self.thr_on = np.broadcast_to(np.asarray(thr_on, np.float32).ravel(), (m,))
        self.thr_off = np.broadcast_to(np.asarray(thr_off, np.float32).ravel(), (m,))
        self.refractory = float(refractory_us)
        self.noise_hz = float(noise_hz)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.max_rounds = int(max_events_per_step)

    def _level(self, idx, L0, L1, t, t0, dt):
        """L at time ``t`` for pixels ``idx`` (linear within the step)."""
        return L0[idx] + (L1[idx] - L0[idx]) * ((t - t0) / dt).astype(np.float32)

    def step(self, L1: np.ndarray, t0: float, t1: float):
        L0 = self.L
        L1 = np.ascontiguousarray(L1, dtype=np.float32).ravel()
        dt = float(t1 - t0)
        ref, t_avail = self.ref, self.t_avail
        # pixels whose reset ends inside this step: the reference is L at that moment
        ending = np.flatnonzero((t_avail > t0) & (t_avail <= t1))
        if ending.size:
            ref[ending] = self._level(ending, L0, L1, t_avail[ending], t0, dt)
        d = L1 - ref
        cand = np.flatnonzero(((d >= self.thr_on) | (-d >= self.thr_off)) & (t_avail <= t1))
        out_i, out_t, out_p = [], [], []
        for _ in range(self.max_rounds):
            if cand.size == 0:
                break
            l0, l1, r = L0[cand], L1[cand], ref[cand]
            on = l1 > r
            thr = np.where(on, self.thr_on[cand], -self.thr_off[cand])
            target = r + thr
            start = np.maximum(t0, t_avail[cand])
            slope = l1 - l0
            with np.errstate(divide="ignore", invalid="ignore"):
                frac = (target - l0) / slope
            tau = t0 + np.where(slope != 0, frac, 0.0).astype(np.float64) * dt
            tau = np.clip(tau, start, t1)
            out_i.append(cand)
            out_t.append(tau)
            out_p.append(on)
            t_new = tau + self.refractory
            t_avail[cand] = t_new
            if self.refractory > 0:
                inside = t_new <= t1
                ci = cand[inside]
                ref[ci] = self._level(ci, L0, L1, t_new[inside], t0, dt)
                cand = ci
            else:
                ref[cand] = target
            dd = L1[cand] - ref[cand]
            cand = cand[(dd >= self.thr_on[cand]) | (-dd >= self.thr_off[cand])]
        if self.noise_hz > 0:
            m = L1.size
            k = self.rng.poisson(m * self.noise_hz * dt * 1e-6)
            if k:
                ni = self.rng.integers(0, m, size=k)
                nt = t0 + self.rng.random(k) * dt
                npol = self.rng.random(k) < 0.5
                ni, first = np.unique(ni, return_index=True)   # one per pixel and step
                nt, npol = nt[first], npol[first]
                ok = nt >= t_avail[ni]
                ni, nt, npol = ni[ok], nt[ok], npol[ok]
                if ni.size:
                    out_i.append(ni)
                    out_t.append(nt)
                    out_p.append(npol)
                    t_avail[ni] = nt + self.refractory
                    inside = t_avail[ni] <= t1
                    ci = ni[inside]
                    ref[ci] = self._level(ci, L0, L1, t_avail[ci], t0, dt)
        # pixels still in reset at the end of the step follow L
        held = t_avail > t1
        ref[held] = L1[held]
        self.L = L1.copy()
        if not out_i:
            e = np.empty(0, np.int64)
            return e, np.empty(0, np.float64), np.empty(0, bool)
        return (np.concatenate(out_i).astype(np.int64), np.concatenate(out_t),
                np.concatenate(out_p))


@dataclass
class EventBatch:
    """Events of N samples, concatenated and sorted by (sample, t).
    Sample i's events are ``[offsets[i], offsets[i+1])``."""
    x: np.ndarray            # uint8
    y: np.ndarray            # uint8
    t: np.ndarray            # uint32, microseconds
    p: np.ndarray            # bool, True = ON
    offsets: np.ndarray      # int64 [N+1]
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sample_ids(self) -> np.ndarray:
        return np.repeat(np.arange(len(self)), self.counts)

    def events(self, i: int) -> np.ndarray:
        """Sample ``i`` as a structured array (:data:`EVENT_DTYPE`, tonic-style)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        ev = np.empty(b - a, EVENT_DTYPE)
        ev["x"], ev["y"], ev["t"], ev["p"] = self.x[a:b], self.y[a:b], self.t[a:b], self.p[a:b]
        return ev

    @staticmethod
    def concatenate(batches: Sequence["EventBatch"]) -> "EventBatch":
        offs, base = [np.zeros(1, np.int64)], 0
        for b in batches:
            offs.append(b.offsets[1:] + base)
            base += int(b.offsets[-1])
        return EventBatch(np.concatenate([b.x for b in batches]),
                          np.concatenate([b.y for b in batches]),
                          np.concatenate([b.t for b in batches]),
                          np.concatenate([b.p for b in batches]),
                          np.concatenate(offs))


def simulate_images(images_u8: np.ndarray, params: DVSParams = DVSParams(),
                    rng: np.random.Generator | None = None) -> EventBatch:
    """Record a batch of uint8 images [N, h, w] (or one [h, w]) with the simulated DVS
    moving along ``params.vertices``. Returns an :class:`EventBatch`."""
    rng = rng if rng is not None else np.random.default_rng(0)
    ren = Renderer(images_u8, params)
    n, s = ren.n, params.sensor
    thr_on, thr_off = threshold_maps(params)
    steps = params.n_steps
    times = np.arange(steps + 1, dtype=np.float64) * params.dt_us
    disp = saccade_displacement(params, times)
    sensor = DVSSensor(ren.log_intensity(*disp[0]), np.tile(thr_on.ravel(), n),
                       np.tile(thr_off.ravel(), n), params.refractory_us, params.noise_hz,
                       rng, params.max_events_per_step)
    idx, ts, ps = [], [], []
    for k in range(1, steps + 1):
        i, t, p = sensor.step(ren.log_intensity(*disp[k]), times[k - 1], times[k])
        if i.size:
            idx.append(i)
            ts.append(t)
            ps.append(p)
    if idx:
        idx, ts, ps = np.concatenate(idx), np.concatenate(ts), np.concatenate(ps)
    else:
        idx, ts, ps = np.empty(0, np.int64), np.empty(0), np.empty(0, bool)
    t_int = np.rint(ts).astype(np.int64)
    sample, pix = np.divmod(idx, s * s)
    order = np.lexsort((t_int, sample))
    sample, pix, t_int, ps = sample[order], pix[order], t_int[order], ps[order]
    yy, xx = np.divmod(pix, s)
    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.cumsum(np.bincount(sample, minlength=n))
    return EventBatch(xx.astype(np.uint8), yy.astype(np.uint8), t_int.astype(np.uint32),
                      ps.astype(bool), offsets)


def simulate_image(image_u8: np.ndarray, params: DVSParams = DVSParams(), seed: int = 0) -> np.ndarray:
    """One image -> structured events (:data:`EVENT_DTYPE`), sorted by t."""
    return simulate_images(np.asarray(image_u8)[None], params, np.random.default_rng(seed)).events(0)


# ------------------------------------------------------------------ voxel grids
def voxel_grid(events: np.ndarray, n_bins: int = N_BINS, sensor_size=(34, 34),
               t_start: float | None = None, t_end: float | None = None) -> np.ndarray:
    """Events (structured, fields x, y, t, p) -> float32 [2B, H, W] event counts.

    Channel ``p*B + b``: OFF (p=0) bins 0..B-1, then ON bins. Bin ``b`` covers
    ``[t_start + b*w, t_start + (b+1)*w)`` with ``w = (t_end - t_start)/B``; events at
    or after ``t_end`` go to the last bin, so every event is counted once and the total
    mass equals the number of events. Default window: the first and last event time."""
    h, w = sensor_size
    if len(events) == 0:
        return np.zeros((2 * n_bins, h, w), np.float32)
    t = events["t"].astype(np.float64)
    lo = float(t.min()) if t_start is None else float(t_start)
    hi = float(t.max()) if t_end is None else float(t_end)
    b = _bins(t, lo, hi, n_bins)
    ch = events["p"].astype(np.int64) * n_bins + b
    flat = (ch * h + events["y"].astype(np.int64)) * w + events["x"].astype(np.int64)
    return np.bincount(flat, minlength=2 * n_bins * h * w).reshape(2 * n_bins, h, w).astype(np.float32)


def _bins(t: np.ndarray, lo: float, hi: float, n_bins: int) -> np.ndarray:
    span = max(hi - lo, 1e-9)
    b = np.floor((t - lo) * (n_bins / span)).astype(np.int64)
    return np.clip(b, 0, n_bins - 1)


def voxel_grids(batch: EventBatch, n_bins: int = N_BINS, sensor: int = 34,
                t_start: float = 0.0, t_end: float | None = None, chunk: int = 2000,
                dtype=np.uint8, progress=None) -> np.ndarray:
    """All samples of ``batch`` -> [N, 2B, S, S] counts (uint8 saturates at 255) with a
    fixed window ``[t_start, t_end]`` (default: the recording length in the batch's
    params, else the last event time)."""
    if t_end is None:
        prm = batch.extra.get("params")
        t_end = prm.duration_us if prm is not None else float(batch.t.max(initial=1))
    n = len(batch)
    c = 2 * n_bins
    per = c * sensor * sensor
    out = np.empty((n, c, sensor, sensor), dtype)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        lo, hi = int(batch.offsets[a]), int(batch.offsets[b])
        sid = np.repeat(np.arange(b - a, dtype=np.int64), np.diff(batch.offsets[a:b + 1]))
        bins = _bins(batch.t[lo:hi].astype(np.float64), t_start, t_end, n_bins)
        ch = batch.p[lo:hi].astype(np.int64) * n_bins + bins
        flat = ((sid * c + ch) * sensor + batch.y[lo:hi]) * sensor + batch.x[lo:hi]
        cnt = np.bincount(flat, minlength=(b - a) * per)
        if np.dtype(dtype) == np.uint8:
            cnt = np.minimum(cnt, 255)
        out[a:b] = cnt.reshape(b - a, c, sensor, sensor).astype(dtype)
        if progress is not None:
            progress(b - a)
    return out


# ------------------------------------------------------------------ storage
def save_events(path, batch: EventBatch, labels: np.ndarray, index: np.ndarray,
                params: DVSParams, **meta) -> None:
    """One .npz (zip, deflate level 1): x, y uint8; t uint32 (us); p bool; offsets int64
    [N+1]; labels uint8; index int32 (position in the Fashion-MNIST file); params and
    meta (JSON strings). Written to a temporary file, then renamed."""
    import zipfile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = dict(x=batch.x, y=batch.y, t=batch.t, p=batch.p, offsets=batch.offsets,
                  labels=np.asarray(labels, np.uint8), index=np.asarray(index, np.int32),
                  params=np.array(params.to_json()), meta=np.array(json.dumps(meta)))
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for k, a in arrays.items():
            with zf.open(k + ".npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(a), allow_pickle=False)
    tmp.replace(path)


def load_events(path) -> tuple[EventBatch, np.ndarray, np.ndarray]:
    """-> (EventBatch with ``extra['params']`` and ``extra['meta']``, labels int64, index)."""
    with np.load(path, allow_pickle=False) as z:
        b = EventBatch(z["x"], z["y"], z["t"], z["p"], z["offsets"].astype(np.int64))
        b.extra["params"] = DVSParams.from_json(str(z["params"]))
        b.extra["meta"] = json.loads(str(z["meta"])) if "meta" in z.files else {}
        return b, z["labels"].astype(np.int64), z["index"].astype(np.int64)


def events_path(split: str, root=None) -> Path:
    return Path(root) if root is not None and str(root).endswith(".npz") else \
        (Path(root) if root is not None else CACHE_DIR) / f"{split}.npz"
