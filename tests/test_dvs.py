"""The simulated DVS and the voxel grids of the fmnist-dvs dataset (models/dvs.py)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models import dvs

LINE = ((-3.0, 0.0), (3.0, 0.0))           # one 100 ms saccade to the right


def bar_image(c0=12, c1=16, value=255):
    img = np.zeros((28, 28), np.uint8)
    img[:, c0:c1] = value
    return img


def params(**kw):
    base = dict(vertices=LINE, threshold_sigma=0.0, refractory_us=0.0, noise_hz=0.0)
    base.update(kw)
    return dvs.DVSParams(**base)


def pixel_gaps(ev):
    """Time gaps between consecutive events of the same pixel."""
    order = np.lexsort((ev["t"], ev["y"], ev["x"]))
    e = ev[order]
    same = (np.diff(e["x"]) == 0) & (np.diff(e["y"]) == 0)
    return np.diff(e["t"])[same]


def test_ramp_gives_interpolated_multiple_events():
    # one pixel, L rises by 1.0 within one 1 ms step: 3 ON events at the crossings
    s = dvs.DVSSensor(np.zeros(1), 0.3, 0.3)
    i, t, p = s.step(np.array([1.0]), 0.0, 1000.0)
    assert p.all() and (i == 0).all()
    np.testing.assert_allclose(np.sort(t), [300, 600, 900], atol=1e-3)
    # back down to -0.05: the reference sits at 0.9, so OFF events at 0.6, 0.3 and 0.0
    i, t, p = s.step(np.array([-0.05]), 1000.0, 2000.0)
    assert (~p).all() and len(t) == 3
    np.testing.assert_allclose(np.sort(t), 1000 + 1000 * np.array([0.4, 0.7, 1.0]) / 1.05, atol=1e-2)


def test_refractory_drops_changes_during_reset():
    s = dvs.DVSSensor(np.zeros(1), 0.3, 0.3, refractory_us=400.0)
    i, t, p = s.step(np.array([0.9]), 0.0, 1000.0)
    # crossing at L = 0.3 (333.3 us); reset until 733.3 us, where ref = L = 0.66
    np.testing.assert_allclose(t, [1000 / 3], atol=1e-2)
    i, t, p = s.step(np.array([1.9]), 1000.0, 2000.0)
    # L(t) = 0.9 + (t - 1000)/1000: crossings at 0.96 (1060 us), reset until 1460
    # (ref = 1.36), next at 1.66 (1760 us), then held past the end of the step
    np.testing.assert_allclose(np.sort(t), [1060.0, 1760.0], atol=1e-2)
    assert p.all()
    i, t, p = s.step(np.array([1.9]), 2000.0, 3000.0)
    # the reset ends at 2160 with ref = 1.9: no change left, no event
    assert len(t) == 0


def test_moving_bar_polarity():
    p = params()
    ev = dvs.simulate_image(bar_image(), p)
    assert len(ev) > 100 and 0 < ev["p"].mean() < 1
    dx = dvs.saccade_displacement(p, ev["t"])[:, 0]
    centre = p.image_offset + dx + 13.5          # bar columns 12..15, moving right
    on = ev["p"] == 1
    # the leading (right) edge brightens -> ON, the trailing (left) edge darkens -> OFF
    assert (ev["x"][on] > centre[on]).all()
    assert (ev["x"][~on] < centre[~on]).all()
    # a vertical edge moving horizontally: every row of the bar fires
    assert set(np.unique(ev["y"])) == set(range(3, 31))


def test_dark_bar_on_bright_reverses_polarity():
    img = 255 - bar_image()
    ev = dvs.simulate_image(img, params())
    dx = dvs.saccade_displacement(params(), ev["t"])[:, 0]
    centre = 3.0 + dx + 13.5
    inner = np.abs(ev["x"] - centre) < 4            # the bar's edges, not the image border
    on = ev["p"] == 1
    assert (ev["x"][inner & on] < centre[inner & on]).all()
    assert (ev["x"][inner & ~on] > centre[inner & ~on]).all()


@pytest.mark.parametrize("noise", [0.0, 50.0])
def test_refractory_period_respected(noise):
    p = params(refractory_us=2500.0, noise_hz=noise, threshold_sigma=0.03,
               vertices=((-3.0, 2.5), (0.0, -2.5), (3.0, 2.5)), saccade_ms=30.0)
    ev = dvs.simulate_image(bar_image(), p, seed=1)
    assert len(ev) > 50
    assert pixel_gaps(ev).min() >= 2500 - 1          # integer-us timestamps
    # without the refractory period the same pixels fire faster
    ev0 = dvs.simulate_image(bar_image(), dataclasses.replace(p, refractory_us=0.0), seed=1)
    assert len(ev0) > len(ev)


def test_static_or_uniform_scene_gives_no_events():
    rng = np.random.default_rng(0)
    textured = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    still = params(vertices=((1.3, -0.7), (1.3, -0.7), (1.3, -0.7)))
    assert len(dvs.simulate_image(textured, still)) == 0
    black = np.zeros((28, 28), np.uint8)         # uniform, same as the background
    assert len(dvs.simulate_image(black, dvs.DVSParams(noise_hz=0.0))) == 0


def test_noise_only_events():
    black = np.zeros((28, 28), np.uint8)
    p = dvs.DVSParams(noise_hz=20.0, saccade_ms=20.0)
    ev = dvs.simulate_image(black, p, seed=3)
    expect = 20.0 * 34 * 34 * p.duration_us * 1e-6
    assert 0.7 * expect < len(ev) < 1.3 * expect
    assert (np.diff(ev["t"]) >= 0).all()


def test_voxel_grid_shape_mass_and_layout():
    p = params(noise_hz=5.0)
    batch = dvs.simulate_images(np.stack([bar_image(), 255 - bar_image()]), p,
                                np.random.default_rng(0))
    B = dvs.N_BINS
    for i in range(2):
        ev = batch.events(i)
        v = dvs.voxel_grid(ev, B, (34, 34), 0, p.duration_us)
        assert v.shape == (2 * B, 34, 34) and v.dtype == np.float32
        assert v.sum() == len(ev)                    # total mass = event count
        assert v[B:].sum() == (ev["p"] == 1).sum()   # ON events in channels B..2B-1
        # per-sample window (first..last event) keeps the mass too
        assert dvs.voxel_grid(ev, B).sum() == len(ev)
    grids = dvs.voxel_grids(batch, B, 34, 0, p.duration_us, dtype=np.float32)
    assert grids.shape == (2, 2 * B, 34, 34)
    np.testing.assert_array_equal(grids[1], dvs.voxel_grid(batch.events(1), B, (34, 34), 0,
                                                           p.duration_us))
    # bin edges: t = 0 -> bin 0, t = end -> last bin, ON channel = B + bin
    ev = np.zeros(3, dvs.EVENT_DTYPE)
    ev["t"] = [0, 150_000, 300_000]
    ev["p"] = [0, 1, 1]
    v = dvs.voxel_grid(ev, B, (34, 34), 0, 300_000)
    assert v[0, 0, 0] == 1 and v[B + 4, 0, 0] == 1 and v[2 * B - 1, 0, 0] == 1


def test_events_roundtrip(tmp_path):
    p = params(noise_hz=1.0)
    batch = dvs.simulate_images(np.stack([bar_image(), bar_image(8, 20, 128)]), p)
    path = tmp_path / "test.npz"
    dvs.save_events(path, batch, np.array([3, 4]), np.array([7, 9]), p, note="x")
    got, labels, index = dvs.load_events(path)
    assert got.extra["params"] == p and got.extra["meta"]["note"] == "x"
    assert labels.tolist() == [3, 4] and index.tolist() == [7, 9]
    for k in ("x", "y", "t", "p", "offsets"):
        np.testing.assert_array_equal(getattr(got, k), getattr(batch, k))
    assert got.x.dtype == np.uint8 and got.t.dtype == np.uint32 and got.p.dtype == bool
    e1 = got.events(1)
    assert e1.dtype == dvs.EVENT_DTYPE and (np.diff(e1["t"]) >= 0).all()
