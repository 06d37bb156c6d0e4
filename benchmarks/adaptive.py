"""Adaptive timesteps on the bundled classifiers (docs/stream.md), measured in one run.

For each model and T (psi = 4): convert with the bundled calibration samples; choose the exit
rule on them (``attach_exit_rule``, tolerance 0 points of agreement with the ANN; the
confidence and the margin rule); run the streaming SNN for all T steps on the test images and
read every sample's exit step off that run; report mean timesteps, top-1 (with the standard
error of the paired difference against all T steps), agreement with the ANN, spikes and energy
per sample over the steps run; then the wall time per sample at batch 1 of
``StreamSession.run_adaptive`` against the batch SNN (the C++ kernel when built) running all T
steps, measured back to back on the same samples (the streaming session runs each ReLU neuron's
step as the kernel's BurstIFStep when the kernel is built, in the blocked layout, and the first
t_min steps in one call; both sessions' pool threads spin during a run and stop at its end, so
that neither takes the cores from the other's next run). A second table chooses each rule on the
first half of the test images (held out from training, as validation images passed to
``convert --exit-data`` would be), at each ``--held-out-tol`` (``--exit-tol``: by default 0 and
0.3 points of agreement with the ANN), and measures it on the second half, with its wall
time; a third table cross-fits (each half measured under the rule chosen on the other) so that
every test image is measured. A plot shows top-1 against mean timesteps as c varies (t_min of
the chosen rule).

    python benchmarks/adaptive.py                     # 10k test images, T = 8 and 16
    python benchmarks/adaptive.py --limit 1000 --T 8  # quicker
"""
from __future__ import annotations

import time

import common
import numpy as np

from onnx2burst.data import load_data
from onnx2burst.evaluation.adaptive import AnytimeRun, _ann_classes, anytime_run, summarize
from onnx2burst.evaluation.energy import ann_macs, energy_model
from onnx2burst.stream import StreamSession, choose_rule, export_stream
from onnx2burst.stream.rule import RULES, c_grid, exit_steps


def _timing(snn, stream, rule, x, samples: int, threads: int | None):
    """Mean ms per sample at batch 1 of the batch SNN and of run_adaptive, each sample run by both back to
    back three times (the median of the three counts, so that a burst of load does not), and the ratio of
    the totals."""
    batch = common.session(snn, threads, spinning="run")  # as StreamSession: spin in a run, stop at its end
    name = snn.graph.input[0].name
    feeds = [{name: x[i:i + 1]} for i in range(samples)]
    state = {"i": 0}

    def snn_run():
        batch.run(None, feeds[state["i"]])

    def adaptive_run():
        stream.run_adaptive(feeds[state["i"]], rule=rule)

    ts = {"snn": [], "adaptive": []}
    for i in range(samples):
        state["i"] = i
        t = common.interleave({"snn": snn_run, "adaptive": adaptive_run}, 3)
        for k in ts:
            ts[k].append(common.median(t[k]))
    return 1e3 * float(np.mean(ts["snn"])), 1e3 * float(np.mean(ts["adaptive"])), \
        float(np.sum(ts["adaptive"]) / np.sum(ts["snn"]))


def measure(model: str, T: int, x, labels, args) -> dict:
    import onnx2burst

    ann_path = common.model_path(model)
    ann = onnx2burst.io.load_model(ann_path)
    t0 = time.perf_counter()
    snn = onnx2burst.convert(ann_path, common.CALIB, T=T, psi=4)
    convert_s = time.perf_counter() - t0
    stream = StreamSession(export_stream(snn), threads=args.threads)
    calib = load_data(common.CALIB, ann)
    cal_run = anytime_run(stream, calib, batch_size=256)
    cal_ann = _ann_classes(ann, calib, 256, args.threads)
    test = load_data({"input": x, "labels": labels}, ann)
    t0 = time.perf_counter()
    run = anytime_run(stream, test, batch_size=500)
    run_s = time.perf_counter() - t0
    ann_pred = _ann_classes(ann, test, 500, args.threads)
    em, macs = energy_model(snn), ann_macs(ann)
    out = {"model": model, "T": T, "samples": len(labels), "convert_s": convert_s, "anytime_run_s": run_s,
           "rules": {}}
    for kind in RULES:
        rule, cal = choose_rule(cal_run.preds, cal_ann, tol=0.0, kind=kind, head=cal_run.head, steps=cal_run.steps)
        sc = run.scores(kind)
        res = summarize(run, exit_steps(sc, rule.c, rule.t_min), ann_pred, labels, em, macs,
                        rule={"kind": kind, "c": rule.c, "t_min": rule.t_min, "tol": 0.0}, e_ac_pj=0.9, e_mac_pj=4.6)
        curve = []
        for c in c_grid(kind)[::2]:
            ex = exit_steps(sc, c, rule.t_min)
            pick = run.preds.argmax(2)[ex - 1, np.arange(len(labels))]
            curve.append((float(ex.mean()), 100 * float((pick == labels).mean()), float(c)))
        # the same rule kind chosen on the first half of the test images (held out from training, as
        # validation images would be: `convert --exit-data`), measured on the second half
        half = len(labels) // 2
        second = AnytimeRun(run.preds[:, half:], run.spikes[:, :, half:], run.head, run.layers, run.steps[:, half:])
        held = {}
        for tol in args.held_out_tol:
            rule_h, cal_h = choose_rule(run.preds[:, :half], ann_pred[:half], tol=tol, kind=kind, head=run.head,
                                        steps=run.steps[:, :half])
            res_h = summarize(second, exit_steps(sc[:, half:], rule_h.c, rule_h.t_min), ann_pred[half:],
                              labels[half:], em, macs,
                              rule={"kind": kind, "c": rule_h.c, "t_min": rule_h.t_min, "tol": tol},
                              e_ac_pj=0.9, e_mac_pj=4.6)
            h_snn, h_ad, h_r = _timing(snn, stream, rule_h, x[half:], args.time_samples, args.threads)
            # cross-fitted: also chosen on the second half and measured on the first, so that every
            # test image is measured under a rule chosen without it
            rule_b, _ = choose_rule(run.preds[:, half:], ann_pred[half:], tol=tol, kind=kind, head=run.head,
                                    steps=run.steps[:, half:])
            ex = np.concatenate([exit_steps(sc[:, :half], rule_b.c, rule_b.t_min),
                                 exit_steps(sc[:, half:], rule_h.c, rule_h.t_min)])
            both = [{"c": r_.c, "t_min": r_.t_min} for r_ in (rule_h, rule_b)]
            res_x = summarize(run, ex, ann_pred, labels, em, macs, rule={"kind": kind, "tol": tol, "folds": both},
                              e_ac_pj=0.9, e_mac_pj=4.6)
            held[f"{tol:g}"] = {**res_h.to_dict(), "calibration": cal_h, "ms_snn_batch1": h_snn,
                                "ms_adaptive_batch1": h_ad, "time_ratio": h_r, "cross": res_x.to_dict()}
        ms_snn, ms_ad, r = _timing(snn, stream, rule, x, args.time_samples, args.threads)
        out["rules"][kind] = {**res.to_dict(), "calibration": cal, "curve": curve, "ms_snn_batch1": ms_snn,
                              "ms_adaptive_batch1": ms_ad, "time_ratio": r, "held_out": held}
        print(f"{model} T={T} {kind}: c={rule.c:.4g} t_min={rule.t_min} steps {res.mean_timesteps:.2f} "
              f"top-1 {res.top1:.2f} vs {res.top1_full_T:.2f} (+-{res.top1_drop_se:.2f}) "
              f"{ms_ad:.2f} vs {ms_snn:.2f} ms", flush=True)
    return out


def _plot(results: list[dict], path) -> None:
    from onnx2burst.report.plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, len({r["model"] for r in results}), figsize=(12, 4.8), squeeze=False)
    for ax, model in zip(axes[0], dict.fromkeys(r["model"] for r in results)):
        for r in (r for r in results if r["model"] == model):
            for kind, style in zip(RULES, ("-", "--", ":")):
                d = r["rules"][kind]
                xs, ys, _ = zip(*sorted(d["curve"]))
                ax.plot(xs, ys, style, marker=".", label=f"T={r['T']}, {kind} (t_min {d['rule']['t_min']})")
                ax.plot([d["mean_timesteps"]], [d["top1"]], "k*", ms=10)
            ax.axhline(r["rules"]["confidence"]["top1_full_T"], color="grey", lw=0.6)
        ax.set_title(f"{model}: top-1 against mean timesteps as c varies")
        ax.set_xlabel("mean timesteps per sample")
        ax.set_ylabel("top-1 (%)")
        ax.legend(fontsize=7)
        ax.set_ylim(bottom=max(ax.get_ylim()[0], 80))
    fig.tight_layout()
    _save(fig, path)


def _steps_top1(d: dict, T: int) -> str:
    """The cells mean timesteps | top-1 adaptive | top-1 all T | difference (SE) of one result."""
    return (f"{d['mean_timesteps']:.2f} ({d['mean_timesteps'] / T:.2f} T) | {d['top1']:.2f} % | "
            f"{d['top1_full_T']:.2f} % | {d['top1'] - d['top1_full_T']:+.2f} ({d['top1_drop_se']:.2f})")


def _ms(d: dict) -> str:
    return f"{d['ms_adaptive_batch1']:.2f} vs {d['ms_snn_batch1']:.2f} (x{d['time_ratio']:.2f})"


def _table(results: list[dict], args) -> str:
    lines = [
        "# Adaptive timesteps: stop each input once its answer is clear",
        "",
        f"`python benchmarks/adaptive.py` ({common.machine()}, {results[0]['samples']} Fashion-MNIST test images, "
        f"psi = 4, the bundled 512 calibration samples choose c and t_min with tolerance 0; "
        f"wall time on the first {args.time_samples} images at batch 1, threads {args.threads or 'default'}, "
        "pool threads spinning during a run and stopping at its end, "
        "each image run by both back to back three times, the median of the three; mean per image). Method: [docs/stream.md](../../docs/stream.md).",
        "",
        "| model | T | rule (c, t_min) | mean timesteps | top-1 adaptive | top-1 all T | difference (SE) | "
        "agreement with ANN | spikes / sample | energy / sample | ms / sample, batch 1: adaptive vs SNN |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for kind, d in r["rules"].items():
            rule = d["rule"]
            lines.append(
                f"| {r['model']} | {r['T']} | {kind} ({rule['c']:.4g}, {rule['t_min']}) | {_steps_top1(d, r['T'])} | "
                f"{d['agreement']:.2f} % vs {d['agreement_full_T']:.2f} % | {d['spikes'] / 1e3:.1f} k vs "
                f"{d['spikes_full_T'] / 1e3:.1f} k | {d['energy_pj'] / 1e6:.1f} vs {d['energy_full_T_pj'] / 1e6:.1f} uJ | "
                f"{_ms(d)} |")
    n2 = results[0]["samples"] - results[0]["samples"] // 2
    lines += ["", f"The same rules with c and t_min chosen on the first {results[0]['samples'] // 2} test images "
              "instead (data the model was not trained on, as validation images would be: `convert --adaptive "
              f"--exit-data`, with `--exit-tol` the points of agreement with the ANN the rule may lose there), "
              f"measured on the other {n2}; wall time on the first {args.time_samples} of those, as above:", "",
              "| model | T | --exit-tol | rule (c, t_min) | mean timesteps | top-1 adaptive | top-1 all T | "
              "difference (SE) | spikes / sample | ms / sample, batch 1: adaptive vs SNN |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for kind, d0 in r["rules"].items():
            for tol, d in d0["held_out"].items():
                rule = d["rule"]
                lines.append(
                    f"| {r['model']} | {r['T']} | {tol} | {kind} ({rule['c']:.4g}, {rule['t_min']}) | "
                    f"{_steps_top1(d, r['T'])} | {d['spikes'] / 1e3:.1f} k vs {d['spikes_full_T'] / 1e3:.1f} k | "
                    f"{_ms(d)} |")
    lines += ["", f"Cross-fitted over all {results[0]['samples']} test images: each half measured under the rule "
              "chosen on the other half (rules: chosen on the first half | on the second):", "",
              "| model | T | --exit-tol | rule | (c, t_min) per half | mean timesteps | top-1 adaptive | top-1 all T | "
              "difference (SE) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for kind, d0 in r["rules"].items():
            for tol, h in d0["held_out"].items():
                d = h["cross"]
                folds = " \\| ".join(f"{f['c']:.4g}, {f['t_min']}" for f in d["rule"]["folds"])
                lines.append(
                    f"| {r['model']} | {r['T']} | {tol} | {kind} | {folds} | {_steps_top1(d, r['T'])} |")
    lines += ["", "Distribution of the exit steps (samples per step, confidence rule):", ""]
    for r in results:
        h = r["rules"]["confidence"]["timesteps"]
        lines.append(f"- {r['model']} T={r['T']}: " + ", ".join(f"{k}: {v}" for k, v in h.items() if v))
    lines += ["", "![top-1 against mean timesteps](adaptive.png)", ""]
    return "\n".join(lines)


def main() -> None:
    ap = common.parser(__doc__, out="adaptive.md", models=("vgg_fmnist", "resnet20_fmnist"), threads=True,
                       limit=None)
    ap.add_argument("--T", type=common.int_list, default=[8, 16], help="timesteps, comma-separated (default 8,16)")
    ap.add_argument("--time-samples", type=int, default=200, help="images timed at batch 1 (default 200)")
    ap.add_argument("--held-out-tol", type=common.float_list, default=[0.0, 0.3],
                    help="--exit-tol values of the held-out table, comma-separated (default 0,0.3)")
    args = ap.parse_args()
    x, labels = common.test_set("full", args.limit)
    results = []
    for T in args.T:
        for m in args.models:
            results.append(measure(m, T, x, labels, args))
            common.write_json(args.out.with_suffix(".json"), results)  # what is measured so far, after each
            _plot(results, args.out.with_suffix(".png"))
            common.write_text(args.out, _table(results, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
