"""Top-1, spikes and energy of each bundled model's SNN against its ANN, over T x psi and with BSR/SSC at T = 8.

For each bundled model (like the paper's Tables I/II/V): top-1 of the ANN and of the SNN for T
in {2, 4, 8, 16, 32} x psi in {1, 2, 4, 8} (plain conversion, docs/method.md §1-§5), and at
T = 8 with + BSR, + SSC and + both (§6-§8): top-1, spikes per sample, SynOps, energy against
the ANN (§7's 45 nm figures), conversion seconds. Calibration: the bundled 512 samples; test:
the bundled 1000-image subset by default (``--test full`` for the 10k set when Fashion-MNIST
is installed). Writes benchmarks/results/accuracy.md and accuracy.png (top-1 against T, one
curve per psi, the ANN as a line).

    python benchmarks/accuracy.py [--models resnet20_fmnist,vgg_fmnist,vgg_max_fmnist]
        [--Ts 2,4,8,16,32] [--psis 1,2,4,8] [--test subset|full] [--no-search] [--merge]

``--merge`` keeps the existing results of the models this run does not redo (to re-measure one
model after a change).
"""
from __future__ import annotations

import time

from common import CALIB, int_list, model_path, parser, test_set, tune, write_json, write_text


def main(argv=None):
    ap = parser(__doc__, out="accuracy.md", models=("resnet20_fmnist", "vgg_fmnist", "vgg_max_fmnist"))
    ap.add_argument("--Ts", type=int_list, default="2,4,8,16,32")
    ap.add_argument("--psis", type=int_list, default="1,2,4,8")
    ap.add_argument("--test", choices=["subset", "full"], default="subset")
    ap.add_argument("--no-search", action="store_true", help="skip the T=8 +BSR/+SSC/+both rows")
    ap.add_argument("--search-samples", type=int, default=256)
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows (and figure data) of models in the existing results that this run does not redo")
    args = ap.parse_args(argv)

    from onnx2burst.config import ConvertConfig
    from onnx2burst.convert import Converter
    from onnx2burst.evaluation import evaluate
    from onnx2burst.report.plots import _pyplot, _save

    x, labels = test_set(args.test)
    Ts, psis = args.Ts, args.psis
    rows, grid = [], {}
    kept = []  # --merge: other models' rows and grid entries from the existing results
    out_json = args.out.with_suffix(".json")
    if args.merge and args.out.is_file():
        redo = set(args.models)
        for line in args.out.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not line.startswith("| ") or cells[0] in redo | {"model"}:
                continue
            kept.append(line)
            if cells[3] in ("BS", "IF (psi=1)"):  # the plain rows feed the figure
                grid[cells[0], int(cells[1]), int(cells[2])] = float(cells[5]) / 100
                grid[cells[0], "ann"] = float(cells[4]) / 100
    head = ("| model | T | psi | config | ANN top-1 | SNN top-1 | diff | spikes/sample | SynOps/sample | "
            "energy vs ANN | convert s |")  # convert s: pass 1 counted in the first row of each model
    sep = "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"

    def row(name, T, psi, label, r, secs):
        e = r.energy
        line = (f"| {name} | {T} | {psi} | {label} | {r.ann.top1 * 100:.2f} | {r.snn.top1 * 100:.2f} | "
                f"{(r.snn.top1 - r.ann.top1) * 100:+.2f} | {e.spikes:,.0f} | {e.synops:,.0f} | "
                f"{e.ratio:.3f} | {secs:.1f} |")
        print(line, flush=True)
        rows.append(line)
        write(partial=True)  # a stopped run still leaves its rows

    def write(partial=False):
        png = args.out.with_suffix(".png")
        status = ("**Partial run**: the rows so far of a run still going or stopped; the figure comes at the end.\n\n"
                  if partial else f"![accuracy against T]({png.name})\n\n")
        text = (f"# ANN vs SNN accuracy{' (PARTIAL)' if partial else ''}\n\n"
                f"Command: `python benchmarks/accuracy.py{' --test full' if args.test == 'full' else ''}`. "
                f"Test images: {len(labels)} ({'the 10k test set' if args.test == 'full' else 'the bundled subset, models/data/fmnist_test.npz'}); "
                "calibration: the bundled 512 samples (models/data/fmnist_calib.npz). psi = 1 is the plain IF neuron "
                "(reset by subtraction), psi > 1 Bursting Spikes (BS); the T = 8 search rows start from BS psi = 4 "
                f"(BSR ratio 1.0, psi 1..8; SSC r = 1.0, tau 1:10:0.5; {args.search_samples} search samples). "
                "Energy: SynOps x 0.9 pJ + first-layer MACs x 4.6 pJ against ANN MACs x 4.6 pJ (docs/method.md §7). "
                "`convert s` includes the search for the search rows; pass 1 (statistics) is counted in the first "
                "row of each model.\n\n" + status + head + "\n" + sep + "\n" + "\n".join(kept + rows) + "\n")
        write_text(args.out, text)
        write_json(out_json, {f"{k[0]}|{k[1]}|{k[2]}" if len(k) == 3 else f"{k[0]}|ann": v for k, v in grid.items()})
        return text

    for name in args.models:
        ann = model_path(name)
        ann_top1, first, data = None, None, None
        for T in Ts:
            for psi in psis:
                t0 = time.perf_counter()
                conv = Converter(ann, ConvertConfig(T=T, psi=psi))
                if first is None:
                    first, data = conv, conv.load_data(CALIB)
                else:
                    conv.reuse_stats(first)  # pass 1 once per model
                snn = conv.run(data).model
                secs = time.perf_counter() - t0
                r = evaluate(str(ann), snn, (x, labels))
                ann_top1 = r.ann.top1
                grid[name, T, psi] = r.snn.top1
                row(name, T, psi, "BS" if psi > 1 else "IF (psi=1)", r, secs)
                if T == 8 and psi == 4 and not args.no_search:
                    for label, bsr, ssc in (("+BSR", True, False), ("+SSC", False, True), ("+BSR+SSC", True, True)):
                        t1 = time.perf_counter()
                        res = tune(conv, data, snn=snn, bsr=bsr, ssc=ssc, samples=args.search_samples)
                        row(name, T, psi, label, evaluate(str(ann), res.model, (x, labels)),
                            secs + time.perf_counter() - t1)
        grid[name, "ann"] = ann_top1

    # the figure: top-1 against T, one curve per psi, the ANN as a line; one panel per model
    plt = _pyplot()
    names = list(dict.fromkeys(k[0] for k in grid))  # this run's models and any kept by --merge
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        for psi in psis:
            ax.plot(Ts, [grid[name, T, psi] * 100 for T in Ts], marker="o", label=f"psi={psi}")
        ax.axhline(grid[name, "ann"] * 100, color="k", ls="--", label="ANN")
        ax.set_xscale("log", base=2)
        ax.set_xticks(Ts, [str(t) for t in Ts])
        ax.set_xlabel("T (timesteps)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(name)
        lo = min(grid[name, T, p] for T in Ts for p in psis) * 100
        ax.set_ylim(max(lo - 2, 0), grid[name, "ann"] * 100 + 1.5)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    png = args.out.with_suffix(".png")
    _save(fig, png)

    print(write())


if __name__ == "__main__":
    main()
