"""Shared click option groups (each owns its options, documents them, and builds the
object they describe), the rich progress display, and the error boundary of commands.

    @click.command()
    @snn_options
    @calibration_options()
    @search_options
    def cmd(**kw):
        with cli_errors():
            source, calib = build_calibration(kw)     # (data source, CalibrationConfig)
            snn = build_snn(kw)                       # dict of ConvertConfig fields
            search = build_search(kw)                 # SearchConfig
"""
from __future__ import annotations

import contextlib
import math
import os
import stat
from typing import Iterator

import click

from onnx2burst.config import MAX_BATCH, MAX_PSI, MAX_SAMPLES, MAX_SEED, MAX_T, MAX_THREADS
from onnx2burst.limits import available_cores

__all__ = ["snn_options", "calibration_options", "threads_option", "max_memory_option", "search_options", "build_snn",
           "build_calibration", "build_search", "parse_size", "parse_floats", "RichProgress", "cli_errors",
           "InputPath", "FiniteFloat", "available_cores", "read_guard_early", "MAX_IMAGE_PIXELS", "MAX_SIDE"]

#: --max-image-pixels at most (65536 x 65536); --size at most this per side.
MAX_IMAGE_PIXELS = 2**32
MAX_SIDE = 2**16


class InputPath(click.ParamType):
    """An input file option: a FIFO, device or socket is refused before anything opens it (it
    would block or never end), naming the option. exists: a missing path is refused here too
    (else the reader names it); folder_ok: a folder (of images) is accepted."""

    name = "path"

    def __init__(self, *, exists: bool = False, folder_ok: bool = False):
        self.exists, self.folder_ok = exists, folder_ok

    def convert(self, value, param, ctx):
        path = os.fspath(value)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if self.exists:
                self.fail(f"{path!r} does not exist", param, ctx)
            return path
        except OSError as e:
            self.fail(f"{path!r}: {e.strerror or e}", param, ctx)
        if stat.S_ISDIR(st.st_mode):
            if not self.folder_ok:
                self.fail(f"{path!r} is a folder; give a file", param, ctx)
        elif not stat.S_ISREG(st.st_mode):
            self.fail(f"{path!r} is not a regular file (a pipe, a device or a socket); refused", param, ctx)
        return path


class FiniteFloat(click.FloatRange):
    """click.FloatRange that also refuses nan and inf (which FloatRange lets through)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


def _cap_threads(ctx, param, value):
    """--threads above the cores available: accepted, capped (more threads than cores only
    make onnxruntime's workers wait for each other), said on stderr."""
    cores = available_cores()
    if value is not None and value > cores:
        click.echo(f"note: --threads {value} is more than the {cores} core(s) available; using {cores}", err=True)
        return cores
    return value


def _check_max_memory(ctx, param, value):
    from onnx2burst.errors import ConfigError
    from onnx2burst.limits import parse_bytes

    try:
        parse_bytes(value)
    except (ConfigError, OverflowError):
        shown = value if len(str(value)) <= 40 else str(value)[:40] + "..."
        raise click.BadParameter(f"{shown!r}: give a size such as 8G, 512M or a number of bytes") from None
    return value


def _compose(*decorators):
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


def parse_size(value: str | None):
    """``"28"``, ``"28x28"`` or ``"32,28"`` -> (H, W)."""
    if value is None:
        return None
    parts = value.lower().replace("x", ",").split(",")
    try:
        nums = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give H or HxW, e.g. 28 or 224x224", param_hint="--size") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 1 or max(nums) > MAX_SIDE:
        raise click.BadParameter(f"{value!r}: give H or HxW with integers from 1 to {MAX_SIDE}", param_hint="--size")
    return tuple(nums)


def parse_floats(value: str | None, name: str):
    """``"0.5"`` or ``"0.485,0.456,0.406"`` -> tuple of floats."""
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        out = ()
    if not out or not all(math.isfinite(v) for v in out):
        raise click.BadParameter(f"{value!r}: give one finite number or one per channel, comma-separated",
                                 param_hint=name) from None
    return out


threads_option = click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None, callback=_cap_threads,
                              help="onnxruntime intra-op threads (default: onnxruntime's, one per core; more than "
                                   "the cores available is capped to them).")

#: --max-memory: the resource bound of onnx2burst.limits (a size string; parsed by the config).
max_memory_option = click.option(
    "--max-memory", default=None, metavar="SIZE", callback=_check_max_memory,
    help="Memory budget, bytes or 8G, 512M: convert picks its batch size to fit it and refuses, before "
         "running anything, a plan that needs more (default: the smaller of 4 GiB and a quarter of the "
         "memory available picks the batch; only a plan above the memory available is refused).")

#: --T, --psi, --tau, --maxpool: the SNN's settings (ConvertConfig fields).
snn_options = _compose(
    click.option("--T", "T", type=click.IntRange(1, MAX_T), default=8, show_default=True, help="Timesteps."),
    click.option("--psi", type=click.IntRange(1, MAX_PSI), default=4, show_default=True,
                 help="Most spikes a neuron emits per timestep (burst size; the kernel's limit is 65536)."),
    click.option("--tau", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                 help="Threshold ratio: neurons fire at tau*vth, each spike worth tau*vth."),
    click.option("--maxpool", type=click.Choice(["lateral", "spikes", "avg"]), default="lateral", show_default=True,
                 help="MaxPool: lateral inhibition (each window passes the input with the most spikes so far; "
                      "measured best, converges as T grows); per timestep on spikes (exports to NIR with --lossy); "
                      "or AveragePool instead (changes the ANN)."),
)


def calibration_options(required: bool = True):
    """--calib, --calib-samples, --batch-size, --seed, --size, --mean, --std,
    --max-image-pixels, --threads, --max-memory."""
    return _compose(
        click.option("--calib", required=required, metavar="DATA", type=InputPath(folder_ok=True),
                     help="Calibration data: .npy (one input), .npz (arrays named like the inputs, optional "
                          "'labels'), or a folder of images."),
        click.option("--calib-samples", type=click.IntRange(1, MAX_SAMPLES), default=512, show_default=True,
                     help="Use at most this many samples (a seeded random subset of larger data)."),
        click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=None,
                     help="Samples per onnxruntime run, in every stage (default: calibration the largest of 64, "
                          "32, ..., 1 that fits the memory budget; the search 32; the guard 256)."),
        click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
                     help="Seed of the sample subset."),
        click.option("--size", default=None, metavar="HxW", help="Image folders: resize to HxW (default: the "
                     "model input's)."),
        click.option("--mean", default=None, metavar="M[,M,M]", help="Image folders: mean of (pixel/255), per channel."),
        click.option("--std", default=None, metavar="S[,S,S]", help="Image folders: std of (pixel/255), per channel."),
        click.option("--max-image-pixels", type=click.IntRange(1, MAX_IMAGE_PIXELS), default=2**26,
                     show_default=True,
                     help="Image folders: refuse an image declaring more pixels (checked before decoding)."),
        threads_option,
        max_memory_option,
    )


def build_snn(kw: dict) -> dict:
    """Pop the snn_options values; returns ConvertConfig keyword arguments."""
    return {k: kw.pop(k) for k in ("T", "psi", "tau", "maxpool")}


#: --bsr, --ssc and how they search: one option group for `convert` and `search` (SearchConfig).
search_options = _compose(
    click.option("--bsr", is_flag=True, help="Burst Spike Reallocation: psi per layer within the energy of uniform "
                                              "--psi-target (§8)."),
    click.option("--ssc", is_flag=True, help="Sensitivity Spike Compression: tau per layer within r x the "
                                              "sensitivity at tau = 1 (§8)."),
    click.option("--psi-max", type=click.IntRange(1, 64), default=8, show_default=True,
                 help="BSR candidates: psi = 1..psi-max."),
    click.option("--psi-target", type=click.IntRange(1, 64), default=None,
                 help="BSR budget: the energy of this uniform psi (default: --psi)."),
    click.option("--energy-ratio", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                 help="BSR budget as a multiple of uniform --psi-target's energy."),
    click.option("--tau-grid", default="1:10:0.5", show_default=True,
                 help="SSC tau candidates: start:stop:step, a comma list, or both (1:3:0.1,3.5:10:0.5: finer "
                      "near 1); must hold 1.0."),
    click.option("--r", "r", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                 help="SSC budget: r x sum_i S_i(tau = 1)."),
    click.option("--ssc-z", "ssc_z", type=click.FloatRange(min=0), default=0.0, show_default=True,
                 help="SSC noise margin: each tau counts at S + z standard errors of its measured gain (0: the "
                      "paper's rule)."),
    click.option("--ssc-folds", "ssc_folds", type=click.IntRange(0, 1000), default=0, show_default=True,
                 help="SSC held-out budget: lower r to what a choice made without each of K folds of the search "
                      "samples keeps on that fold (0: the paper's rule; 4 is a good K)."),
    click.option("--energy", type=click.Choice(["spikes", "synops"]), default="spikes", show_default=True,
                 help="E_i(k) of the search: a layer's spikes per sample, or its SynOps."),
    click.option("--search-samples", type=click.IntRange(1, MAX_SAMPLES), default=256, show_default=True,
                 help="Calibration samples the sensitivities are measured on (the first N)."),
    click.option("--sensitivity", type=click.Choice(["auto", "kl", "mse"]), default="auto", show_default=True,
                 help="What S_i(k) measures: kl, the symmetric KL of class scores (the paper's); mse, each output's "
                      "squared error over the ANN output's variance, summed over the outputs; auto, kl for outputs "
                      "of a Softmax/LogSoftmax or [N, K] logits, mse for any other (detector heads, boxes)."),
    click.option("--guard-data", "guard_data", type=InputPath(exists=True), default=None,
                 metavar="DATA",
                 help="SSC decision guard (not in the paper): inputs (.npz/.npy, labels not needed; not the "
                      "calibration samples) on which SSC's choice must keep the SNN's agreement with the ANN "
                      "(docs/method.md §10)."),
    click.option("--guard-samples", "guard_samples", type=click.IntRange(2, MAX_SAMPLES), default=4096,
                 show_default=True,
                 help="Use the first N inputs of --guard-data."),
    click.option("--guard-mode", "guard_mode", type=click.Choice(["model", "layer"]), default="model",
                 show_default=True, help="Rebuild and check the whole SNN, backing off along SSC's frontier "
                                         "(model), or check each changed layer alone (layer)."),
    click.option("--guard-tol", "guard_tol", type=click.FloatRange(min=0), default=0.5, show_default=True,
                 help="--guard-mode model: points of agreement with the ANN the choice may lose (outputs that "
                      "are not class scores: hundredths of normalised error it may add, docs/method.md §10)."),
    click.option("--guard-checks", "guard_checks", type=click.IntRange(1, 1000), default=8, show_default=True,
                 help="--guard-mode model: rebuilds at most while backing off."),
    click.option("--guard-z", "guard_z", type=click.FloatRange(min=0), default=2.0, show_default=True,
                 help="--guard-mode layer: flag a layer whose loss of agreement exceeds this many standard errors."),
    click.option("--workers", type=click.IntRange(0, 4096), default=0, show_default=True, metavar="N",
                 help="Run the sensitivity tables' cells as Ray tasks on a local Ray instance of N CPUs (needs "
                      "pip install 'onnx2burst[ray]'; 0: in this process). Same choices."),
    click.option("--ray-address", "ray_address", default=None, metavar="ADDR",
                 help="Run them on the Ray cluster at ADDR (e.g. 10.0.0.1:6379) instead."),
)


def build_search(kw: dict, *, default_both: bool = False):
    """Pop the search_options values (and read --batch-size); returns a ``SearchConfig``.
    default_both: neither --bsr nor --ssc given means both (the `search` command)."""
    from onnx2burst.config import GuardConfig, SearchConfig

    bsr, ssc = kw.pop("bsr"), kw.pop("ssc")
    if default_both and not (bsr or ssc):
        bsr = ssc = True
    guard_data = kw.pop("guard_data")
    guard = dict(samples=kw.pop("guard_samples"), mode=kw.pop("guard_mode"), tol=kw.pop("guard_tol"),
                 checks=kw.pop("guard_checks"), z=kw.pop("guard_z"))
    return SearchConfig(bsr=bsr, ssc=ssc, psi_max=kw.pop("psi_max"), psi_target=kw.pop("psi_target"),
                        energy_ratio=kw.pop("energy_ratio"), tau_grid=kw.pop("tau_grid"), r=kw.pop("r"),
                        ssc_z=kw.pop("ssc_z"), ssc_folds=kw.pop("ssc_folds"), energy=kw.pop("energy"),
                        samples=kw.pop("search_samples"), batch_size=kw.get("batch_size"),
                        sensitivity=kw.pop("sensitivity"),
                        guard=None if guard_data is None else GuardConfig(data=guard_data, **guard),
                        workers=kw.pop("workers"), ray_address=kw.pop("ray_address"))


def read_guard_early(search, conv):
    """``search`` with its guard data read and checked now (a ``CalibrationSet`` named after the
    file), so that bad guard data fails before the conversion and search, not after them."""
    import dataclasses

    from onnx2burst.data import CalibrationSet, load_data

    g = search.guard
    if g is None or isinstance(g.data, CalibrationSet):
        return search
    data = load_data(g.data, conv.source, samples=g.samples, max_memory=conv.calibration.max_memory)
    return dataclasses.replace(search, guard=dataclasses.replace(g, data=data))


def build_calibration(kw: dict):
    """Pop the calibration_options values (--batch-size stays for build_search); returns
    ``(source, CalibrationConfig)``."""
    from onnx2burst.config import CalibrationConfig, ImageOptions

    size, max_pixels = parse_size(kw.pop("size")), kw.pop("max_image_pixels")
    if size is not None and size[0] * size[1] > max_pixels:
        raise click.BadParameter(f"{size[0]}x{size[1]} is {size[0] * size[1]:,} pixels, more than --max-image-pixels "
                                 f"{max_pixels:,}", param_hint="--size")
    image = ImageOptions(size=size,
                         mean=parse_floats(kw.pop("mean"), "--mean") or (0.0,),
                         std=parse_floats(kw.pop("std"), "--std") or (1.0,),
                         max_pixels=max_pixels)
    batch = kw.get("batch_size")  # left for build_search; None: chosen from the memory budget
    cfg = CalibrationConfig(samples=kw.pop("calib_samples"), seed=kw.pop("seed"),
                            **({"batch_size": batch} if batch is not None else {}),
                            threads=kw.pop("threads"), image=image, max_memory=kw.pop("max_memory"))
    return kw.pop("calib"), cfg


class RichProgress:
    """``onnx2burst.progress.Progress`` shown as rich bars on stderr, one per stage."""

    def __init__(self, enabled: bool = True):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator:
        if not self.enabled:
            yield _Null()
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=False) as p:
            task = p.add_task(name, total=total)
            yield _Stage(p, task)
            p.update(task, completed=total if total is not None else 1, total=total or 1)

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(f"[yellow]note:[/] {message}")


class _Stage:
    def __init__(self, p, task):
        self.p, self.task = p, task

    def advance(self, n: float = 1, description: str | None = None) -> None:
        if description is not None:
            self.p.update(self.task, description=description)
        self.p.advance(self.task, n)


class _Null:
    def advance(self, n: float = 1, description: str | None = None) -> None:
        pass


@contextlib.contextmanager
def cli_errors(model=None):
    """Turn onnx2burst's errors into a clean message and a non-zero exit. model: the model
    file of the command; a message about its graph that does not name it is prefixed with it."""
    from onnx2burst.errors import GraphError, Onnx2BurstError

    try:
        yield
    except Onnx2BurstError as e:
        message = str(e)
        if model is not None and isinstance(e, GraphError) and os.path.basename(os.fspath(model)) not in message:
            message = f"{model}: {message}"
        raise click.ClickException(message) from None
