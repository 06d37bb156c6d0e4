"""How every corpus model (tests/corpus.py) converts at T=128, psi=8, and how closely its SNN tracks the ANN.

Per model: opset, nodes, neurons, MaxPools in the spiking part, whether it converts (exact /
inexact with which ops / refused and why), top-1 agreement of the SNN with the ANN and the
relative error of the logits ||snn - ann|| / ||ann|| on 256 standard-normal inputs, the
number of classes the ANN predicts over them (a random-weight net that predicts one class
for every input makes agreement meaningless; the corpus re-centres each classifier so that
this does not happen), and the conversion time. Calibration: 64 other standard-normal
samples. Writes ``benchmarks/results/corpus.md`` (with the "What converts, and what does
not" table, from the registry and the corpus) and ``corpus.json`` beside it.

    python benchmarks/corpus.py [--matrix] [--only NAME ...] [--T 128 --psi 8] [--threads 2]

Results accumulate in corpus.json, so models can be (re)measured one by one with --only.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

from common import load_store, machine, parser, predict, session, write_json, write_text
from tests import corpus

EVAL, CALIB = 256, 64


def measure(spec: corpus.CorpusModel, T: int, psi: int, threads: int | None) -> dict:
    from onnx2burst.config import CalibrationConfig, ConvertConfig
    from onnx2burst.convert import Converter
    from onnx2burst.errors import Onnx2BurstError, UnsupportedModelError

    row = {"name": spec.name, "family": spec.family, "opset": spec.opset, "T": T, "psi": psi}
    t = time.perf_counter()
    m = spec.build()
    row["build_s"] = round(time.perf_counter() - t, 2)
    row["nodes"] = len(m.graph.node)
    row["op_types"] = sorted({n.op_type for n in m.graph.node})
    batch = max(1, 1024 // T)       # T*batch rows per onnxruntime run
    cfg = ConvertConfig(T=T, psi=psi, calibration=CalibrationConfig(samples=CALIB, batch_size=batch, threads=threads))
    t = time.perf_counter()
    try:
        try:
            conv = Converter(m, cfg)
            row["converted"], row["inexact_ops"] = "exact", []
        except UnsupportedModelError as e:
            row["refused_first"] = str(e).splitlines()[0]
            row["inexact_ops"] = sorted({f"{op} ({node})" for node, op, _ in e.issues})
            import dataclasses

            conv = Converter(m, dataclasses.replace(cfg, allow_inexact=True))
            row["converted"] = "inexact"
        a = conv.analysis
        row["neurons"], row["maxpools"] = len(a.neurons), len(a.maxpools)
        result = conv.run(corpus.inputs(m, CALIB, seed=1))
    except Onnx2BurstError as e:
        row["converted"] = "refused"
        row["error"] = str(e).splitlines()[0]
        return row
    row["convert_s"] = round(time.perf_counter() - t, 1)
    row["stages_s"] = {k: round(v, 1) for k, v in result.stage_seconds.items()}
    row["bias_calibrated"] = len(result.deltas)
    snn = result.model
    x = corpus.inputs(m, EVAL, seed=2)
    ann = corpus.run_ann(m, x, spec.batch1)
    sess = session(snn, threads)
    t = time.perf_counter()
    y = predict(sess, x, 16)
    row["eval_s"] = round(time.perf_counter() - t, 1)
    ann, y = ann.reshape(len(ann), -1), y.reshape(len(y), -1)   # a [N, K, 1, 1] head compares as [N, K]
    row["rel_error"] = float(np.linalg.norm(y - ann) / np.linalg.norm(ann))
    row["agreement"] = float((y.argmax(1) == ann.argmax(1)).mean())
    row["ann_classes"] = int(len(set(ann.argmax(1).tolist())))
    row["classes"] = int(ann.shape[1])
    if row["maxpools"] and spec in corpus.MODELS:    # the opset matrix repeats the same architectures
        t = time.perf_counter()
        row["rel_error_avgpool"] = _avgpool_error(m, cfg, x, threads, allow_inexact=row["converted"] == "inexact")
        row["avgpool_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        y, _ = _snn_logits(m, cfg, x, threads, maxpool="spikes", allow_inexact=row["converted"] == "inexact")
        y = y.reshape(len(y), -1)
        row["rel_error_spikes"] = float(np.linalg.norm(y - ann) / np.linalg.norm(ann))
        row["agreement_spikes"] = float((y.argmax(1) == ann.argmax(1)).mean())
        row["spikes_s"] = round(time.perf_counter() - t, 1)
    return row


def _snn_logits(m, cfg, x, threads, **options):
    """(SNN logits on ``x``, the Converter) for the conversion of ``m`` with ``cfg`` changed by ``options``."""
    import dataclasses

    from onnx2burst.convert import Converter

    conv = Converter(m, dataclasses.replace(cfg, **options))
    sess = session(conv.run(corpus.inputs(m, CALIB, seed=1)).model, threads)
    return predict(sess, x, 16), conv


def _avgpool_error(m, cfg, x, threads, allow_inexact: bool) -> float:
    """The same conversion with MaxPool replaced by AveragePool in both the ANN and the SNN
    (``--maxpool avg``): how much of the error the MaxPools make. Relative to the spread of
    that ANN's logits around their mean (the AveragePool ANN's classifier is not re-centred)."""
    y, conv = _snn_logits(m, cfg, x, threads, maxpool="avg", allow_inexact=allow_inexact)
    y = y.reshape(len(y), -1)
    ann = corpus.run_ann(conv.canonical.model, x).reshape(len(y), -1)
    return float(np.linalg.norm(y - ann) / np.linalg.norm(ann - ann.mean(0)))


def _converted(r: dict) -> str:
    if r["converted"] == "exact":
        return "exact"
    if r["converted"] == "inexact":
        ops = [o.split(" (")[0] for o in r["inexact_ops"]]
        return "inexact: " + ", ".join(f"{op}" + (f" x{ops.count(op)}" if ops.count(op) > 1 else "")
                                       for op in sorted(set(ops)))
    err = r.get("error", "")
    if "would need about" in err:  # limits: the memory estimate, shortened
        need = err.split("would need about ", 1)[1].split(" (", 1)[0]
        return f"refused: memory estimate {need} (see below)"
    return "refused: " + err


def results_table(rows: list[dict]) -> list[str]:
    out = ["| model | opset | nodes | neurons | MaxPools | converted | top-1 agreement | rel. error | "
           "rel. error, AvgPool in both | `--maxpool spikes`: agreement, rel. error | ANN classes | convert s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["converted"] == "refused":
            out.append(f"| {r['name']} | {r['opset']} | {r['nodes']} | - | - | {_converted(r)} | - | - | - | - | - | - |")
            continue
        avg = f"{r['rel_error_avgpool']:.3f}" if "rel_error_avgpool" in r else "-"
        lat = (f"{100 * r['agreement_spikes']:.1f} %, {r['rel_error_spikes']:.3f}" if "rel_error_spikes" in r
               else "-")
        out.append(f"| {r['name']} | {r['opset']} | {r['nodes']} | {r['neurons']} | {r['maxpools']} | "
                   f"{_converted(r)} | {100 * r['agreement']:.1f} % | {r['rel_error']:.3f} | {avg} | {lat} | "
                   f"{r['ann_classes']}/{r['classes']} | "
                   f"{r['convert_s']:.1f} |")
    return out


def whatconverts_table(rows: list[dict]) -> list[str]:
    """The README table: per op family, what the registry does, with the corpus models using it."""
    home = {m.name for m in corpus.MODELS}      # the opset matrix repeats the same networks
    types = {r["name"]: set(r["op_types"]) for r in rows if r["name"] in home}
    models = corpus.family_models(types)
    out = ["| op family | ops | in the spiking part | corpus models | note |", "|---|---|---|---|---|"]
    for fam, ops, claim, ctx, note in corpus.FAMILIES:
        used = models.get(fam, [])
        shown = ", ".join(used[:6]) + (f" (+{len(used) - 6})" if len(used) > 6 else "") if used else "-"
        out.append(f"| {fam} | {', '.join(ops)} | {corpus.CLAIMS[claim]} | {shown} | {note} |")
    return out


WHAT_INTRO = """## What converts, and what does not

Checked against the op registry (`onnx2burst/rewrite/registry.py`) by `tests/test_corpus.py`;
the corpus models are those of `tests/corpus.py` whose graphs use the op (see
`benchmarks/results/corpus.md` for how each converts). This is about the *spiking* part of a
graph, after the first ReLU: before it every op runs once on the analog input, exactly as in
the ANN. Refused ops are listed by node name before any calibration data is read;
`--allow-inexact` converts anyway (they then run per timestep on spikes, an approximation).
"""

WHAT_OUTRO = """
MaxPool is the one approximation on by default, and the corpus measures it. By default it pools
by lateral inhibition (each window passes its input with the most spikes so far), which
converges as T grows. At T=128, psi=8 (random weights, standard-normal inputs) the models with
MaxPool track their ANN with relative errors of 0.01-0.29 (VGG-16, five MaxPools: 0.29 and
77 % top-1 agreement; 0.22 and 86 % at T=512), against 0.03-0.73 with MaxPool applied per
timestep on the spike maps (`--maxpool spikes`; VGG-16: 0.73, 38 %), whose error does not
shrink with T. With AveragePool in place of MaxPool in both the ANN and the SNN
(`--maxpool avg`) the same conversions reach 0.01-0.08 (DenseNet aside: with AveragePool its
ANN predicts one class for every input); the models without MaxPool track within 0.02-0.11. On
the trained MaxPool VGG (`benchmarks/results/convert.md`) lateral pooling gives 94.05 / 94.15 /
94.21 % at T = 4 / 8 / 16 against 93.94 / 94.09 / 93.97 % per timestep (ANN 94.37 %), while
`--maxpool avg` changes the ANN itself (65 %).

Exports from torch (TorchScript exporter, opsets 11, 13, 17, 20: the same network gives the
same SNN at every opset) and from older exporters (opsets 7-9: weights among the graph inputs,
`Sum`, Constant/ConstantOfShape weights, BatchNorm unfused or as Mul/Add, hard-coded batch 1 in
Reshape and `Flatten(axis=0)`, Clip with attributes, Upsample) convert; models below opset 13
are upgraded with `onnx.version_converter`.
"""


def whatconverts(rows: list[dict]) -> str:
    """The README section, as markdown."""
    return "\n".join([WHAT_INTRO] + whatconverts_table(rows) + [WHAT_OUTRO])


def write(rows: list[dict], out: Path, args) -> None:
    seconds = sum(r.get("build_s", 0) + r.get("convert_s", 0) + r.get("eval_s", 0) + r.get("avgpool_s", 0)
                  + r.get("spikes_s", 0) for r in rows)
    lines = [f"# Corpus benchmark (T={args.T}, psi={args.psi})", "",
             "`python benchmarks/corpus.py` converts every model of `tests/corpus.py` (no downloads: "
             "small-width torch architectures with seeded random weights exported at opsets 11-20, and "
             "graphs in the style of older exporters built with `onnx.helper`, opsets 7-9) and compares "
             "the SNN with the ANN.", "",
             f"- Inputs: standard normal (the distribution of normalised images), {CALIB} calibration samples "
             f"(seed 1) and {EVAL} evaluation inputs (seed 2). BatchNorm statistics of the torch models are "
             "those of such inputs, and each classifier is re-centred (logits of mean 0, std 1 per class): "
             "random-weight nets otherwise predict one class for nearly every input. \"ANN classes\" counts "
             "the classes the ANN predicts over the evaluation inputs (10 = not degenerate).",
             "- rel. error: ||SNN logits - ANN logits|| / ||ANN logits|| over all evaluation inputs; top-1 "
             "agreement: how often the SNN's argmax is the ANN's.",
             f"- converted: exact, or inexact (ops refused by default, converted with `allow_inexact`); "
             f"convert s: the whole conversion (thresholds, rewrite, bias calibration) with "
             f"{max(1, 1024 // args.T)} samples per onnxruntime run.",
             "- MaxPools: MaxPool nodes in the spiking part, pooled by lateral inhibition (the default: each window "
             "passes its input with the most spikes so far). "
             "\"rel. error, AvgPool in both\": the same conversion with `--maxpool avg` against the ANN with "
             "AveragePool in place of MaxPool (relative to the spread of that ANN's logits): what is left "
             "once the MaxPools are out of the comparison. \"`--maxpool spikes`\": the same conversion with "
             "MaxPool applied per timestep on the spike maps (the default before lateral pooling), against "
             "the unchanged ANN.", ""]
    lines += results_table(rows)
    done = [r for r in rows if r["converted"] != "refused"]
    lines += ["", f"{len(done)}/{len(rows)} models converted "
              f"({sum(r['converted'] == 'exact' for r in rows)} exact, "
              f"{sum(r['converted'] == 'inexact' for r in rows)} inexact); {seconds / 60:.1f} min in all (export, "
              f"conversions and evaluations, summed over the models), machine: {machine()} "
              "shared with other work, run under `nice`.", ""]
    refused = [r for r in rows if r["converted"] == "refused"]
    if refused:
        first = refused[0].get("error", "").split("; ")[0]
        lines += [f"Refused: {', '.join(r['name'] for r in refused)}, by the memory pre-check (\"{first}\"). "
                  "`onnx2burst.limits.estimate` takes each dim that shape inference leaves symbolic as the "
                  "batch; ShuffleNetV2's channel shuffle (a 5-D Reshape whose shape is computed from the tensor) "
                  "then counts as batch^4 elements at opsets 17 and 20. The same network converts at opsets 11 "
                  "and 13, where those shapes stay unknown: a false refusal, to be fixed in `limits`.", ""]
    lines += [whatconverts(rows)]
    write_text(out, "\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = parser(__doc__, out="corpus.md", threads=True)
    ap.add_argument("--T", type=int, default=128)
    ap.add_argument("--psi", type=int, default=8)
    ap.add_argument("--matrix", action="store_true", help="also the torch architectures at their other opsets")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--fresh", action="store_true", help="forget earlier results (corpus.json)")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the report from corpus.json")
    ap.add_argument("--whatconverts", type=Path, default=None,
                    help="also write the README section \"What converts, and what does not\" to this file")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    store_path = args.out.with_suffix(".json")
    store = load_store(store_path, args.fresh)
    if store.get("T") != args.T or store.get("psi") != args.psi:
        store = {"T": args.T, "psi": args.psi}
    results = store.setdefault("rows", {})
    chosen = corpus.ALL if args.matrix else corpus.MODELS
    if args.only:
        chosen = [corpus.by_name(n) for n in args.only]
    if args.report_only:
        chosen = []
    t0 = time.perf_counter()
    for spec in chosen:
        row = measure(spec, args.T, args.psi, args.threads)
        results[spec.name] = row
        write_json(store_path, store)
        print(f"{spec.name:24s} {_converted(row):40s} agree {row.get('agreement', float('nan')):.3f} "
              f"rel {row.get('rel_error', float('nan')):.3f} {row.get('convert_s', 0):.1f}s", flush=True)
    order = [m.name for m in corpus.ALL]
    rows = [results[n] for n in order if n in results]
    write(rows, args.out, args)
    if args.whatconverts:
        write_text(args.whatconverts, whatconverts(rows) + "\n")
    print(f"wrote {args.out} (this run: {(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
