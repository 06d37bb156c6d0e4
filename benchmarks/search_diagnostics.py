"""Top-1, agreement, KL and spikes of BS, of BS with one layer's tau changed, and of SSC (its budget against top-1).

For one model and T, on the test set: BS; BS with one layer's tau changed (``--layer``, ``--taus``);
SSC (r = 1.0) from BS, with the joint check of ``tune`` (S of the rebuilt SNN on the search samples
against what the per-layer tables add up to). Columns: top-1, agreement with the ANN, the symmetric
KL to the ANN (§6's measure) and spikes per sample. Prints a Markdown table.

With ``--leave-one-in``, a second table: for every layer whose tau SSC changed, BS with only that
layer at its chosen tau, next to the tau table's Delta S for it (on the search samples). It shows
which layers the KL budget misprices: a layer whose Delta S is negative (it "pays" for others)
while its top-1 and agreement drop.

    python benchmarks/search_diagnostics.py --model resnet20_fmnist --T 4 \\
        --layer /layers/layers.2/layers.2.2/relu2/Relu --taus 2,4 [--leave-one-in]
"""
from __future__ import annotations

import time

from common import CALIB, model_path, parser, test_set, tune


def main(argv=None):
    ap = parser(__doc__, limit=10000)
    ap.add_argument("--model", default="resnet20_fmnist")
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--layer", default="/layers/layers.2/layers.2.2/relu2/Relu", help="the layer whose tau alone changes")
    ap.add_argument("--taus", default="2,4", help="tau values for --layer")
    ap.add_argument("--grid", default="1:10:0.5", help="SSC tau grid")
    ap.add_argument("--search-samples", type=int, default=256)
    ap.add_argument("--folds", type=int, default=0, help="SSC: held-out budget over this many folds (0: the paper's rule)")
    ap.add_argument("--leave-one-in", action="store_true",
                    help="also evaluate BS with each layer SSC changed, alone at its chosen tau")
    args = ap.parse_args(argv)

    from onnx2burst import search as S
    from onnx2burst.config import ConvertConfig, parse_grid
    from onnx2burst.convert import Converter
    from onnx2burst.evaluation import evaluate

    x, labels = test_set("full", args.limit)
    ann = model_path(args.model)
    conv = Converter(ann, ConvertConfig(T=args.T, psi=4))
    data = conv.load_data(CALIB)
    stats = conv.activation_stats(data, None)
    bs_settings = conv.settings()
    if args.layer not in bs_settings:
        raise SystemExit(f"--layer {args.layer!r} is not a neuron of {args.model}: {list(bs_settings)}")

    print(f"{args.model}, T = {args.T}, {len(labels)} test samples\n")
    print("| SNN | top-1 | agreement | sym. KL (test) | spikes/sample | S on the search samples: tables -> rebuilt |")
    print("|---|---:|---:|---:|---:|---|")

    def row(label, model, check=""):
        r = evaluate(str(ann), model, (x, labels))
        print(f"| {label} | {r.snn.top1 * 100:.2f} | {r.agreement * 100:.2f} | {r.sym_kl:.4f} | "
              f"{r.energy.spikes:,.0f} | {check} |", flush=True)
        return r

    bs = S.rebuild(conv, data, stats, bs_settings)
    r_bs = row("BS", bs)
    for tau in (float(t) for t in args.taus.split(",") if t):
        st = dict(bs_settings)
        st[args.layer] = (st[args.layer][0], tau)
        row(f"BS, {'/'.join(args.layer.split('/')[-3:-1])} tau {tau:g}", S.rebuild(conv, data, stats, st))
    t0 = time.perf_counter()
    res = tune(conv, data, snn=bs, bsr=False, ssc=True, tau_grid=parse_grid(args.grid), samples=args.search_samples,
               ssc_folds=args.folds)
    ck = res.checks["ssc"]
    r_ssc = row(f"+SSC ({time.perf_counter() - t0:.0f} s)", res.model,
                f"{ck.before:.4f} -> {ck.predicted:.4f} predicted, {ck.measured:.4f} rebuilt")
    if args.leave_one_in:
        leave_one_in(conv, data, stats, bs_settings, res, ann, (x, labels), r_bs, r_ssc)


def leave_one_in(conv, data, stats, bs_settings, res, ann, test, r_bs, r_ssc):
    """BS with one layer at the tau SSC chose for it, for each layer SSC changed."""
    from onnx2burst import search as S
    from onnx2burst.evaluation import evaluate

    tab = res.measurements["ssc"].tau
    j1 = tab.column(1.0)
    total_e = float(tab.spikes[:, j1].sum())
    print("\nLeave-one-in: BS with only this layer at its SSC tau (differences to BS; Delta S and the spike share "
          "from the tau table on the search samples)\n")
    print("| layer | tau | Delta S (table) | spikes saved (table) | top-1 | agreement | sym. KL (test) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    sums = [0.0, 0.0, 0.0]
    for i, name in enumerate(tab.layers):
        tau = float(res.settings[name][1])
        if tau == float(bs_settings[name][1]):
            continue
        st = dict(bs_settings)
        st[name] = (st[name][0], tau)
        r = evaluate(str(ann), S.rebuild(conv, data, stats, st), test)
        j = tab.column(tau)
        d = [(r.snn.top1 - r_bs.snn.top1) * 100, (r.agreement - r_bs.agreement) * 100, r.sym_kl - r_bs.sym_kl]
        sums = [a + b for a, b in zip(sums, d)]
        print(f"| {name} | {tau:g} | {tab.S[i, j] - tab.S[i, j1]:+.4f} | "
              f"{(tab.spikes[i, j1] - tab.spikes[i, j]) / total_e:.3f} | {d[0]:+.2f} | {d[1]:+.2f} | {d[2]:+.4f} |",
              flush=True)
    print(f"| sum of the rows | | | | {sums[0]:+.2f} | {sums[1]:+.2f} | {sums[2]:+.4f} |")
    print(f"| +SSC, all together | | | | {(r_ssc.snn.top1 - r_bs.snn.top1) * 100:+.2f} | "
          f"{(r_ssc.agreement - r_bs.agreement) * 100:+.2f} | {r_ssc.sym_kl - r_bs.sym_kl:+.4f} |")


if __name__ == "__main__":
    main()
