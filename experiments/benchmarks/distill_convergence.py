"""Convergence benchmark: generator updates DisBack needs to reach Diff-Instruct's final MMD.

For each variant (regime) of `configs/distill.py` (`gmm8`, `grid`: no score mismatch; `gmm8_far`:
G0 off the data; `gmm8_weak`: a teacher trained for few steps; `gmm8_exact`: the analytic teacher,
the negative control; `gmm8_edm_teacher`, `gmm8_fm_teacher`: EDM and flow-matching teachers;
`digits`) one teacher is trained (or reused) in
`<root>/teachers/<teacher variant>_<steps>` (or taken from `--teacher_workdir`, one variant
only), then the variant runs every method for each seed in `<root>/<variant>/seed<s>` (finished
runs are reused, interrupted ones resumed). Per regime it prints the teacher's score mismatch at
step 0 on G0's diffused samples and on diffused data, the recorded path (its distances to the
teacher), and per method the updates needed to bring the smoothed MMD^2 within
`experiments.distill.REACH_TOLERANCE` of its Diff-Instruct baseline's final MMD^2, the ratio of
that count to the baseline's own (DisBack's goal: <= 0.5; the positive control
`diff_instruct_ahead` shows the study can measure such a ratio; consistency distillation,
`consistency`, is measured against Diff-Instruct the same way), the final MMD^2 and the other
final metrics, all as mean +- standard deviation over seeds, plus the stage-1 cost. The tables
are also written to `<root>/convergence_<variants>.md` and `.json`. The load average is printed
before and after (wall times on a loaded machine are upper bounds).

    .venv/bin/python -m experiments.benchmarks.distill_convergence \
        [--variants gmm8,grid,gmm8_far,gmm8_weak,gmm8_exact] [--seeds 0,1,2] \
        [--root runs/bench_distill] [--teacher_workdir runs/digits_vp] \
        [--override distill.num_steps=3000 ...]

Runs counted as never reaching the level enter the ratio as missing (reported as `n_reached`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time

import numpy as np

from configs import distill as distill_configs
from experiments import distill as exp


def _set(config, dotted: str) -> None:
    name, value = dotted.split("=", 1)
    node = config
    *parents, leaf = name.split(".")
    for p in parents:
        node = node[p]
    old = node[leaf]
    node[leaf] = type(old)(value) if not isinstance(old, bool) else value.lower() == "true"


def _teacher(variant: str, root: str, teacher_steps: int | None) -> str:
    t = distill_configs.get_config(variant).teacher
    steps = teacher_steps or t.num_steps
    tdir = os.path.join(root, "teachers", f"{t.variant}_{steps}")
    c = importlib.import_module(f"configs.{t.config_module}").get_config(t.variant)
    with c.unlocked():
        c.train.num_steps = steps
        c.train.checkpoint_every = steps
    study = exp.teacher_study(c)
    if not os.path.exists(os.path.join(tdir, study.EVAL_FILE)):  # not finished yet
        study.train_and_evaluate(c, tdir)
    return tdir


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return None, None, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def _fmt(mean: float | None, std: float | None, f: str = "{:.3g}") -> str:
    if mean is None:
        return "-"
    return f"{f.format(mean)} ± {f.format(std)}"


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="gmm8,grid,gmm8_far,gmm8_weak,gmm8_exact")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", default="runs/bench_distill")
    parser.add_argument("--teacher_steps", type=int, default=None)
    parser.add_argument(
        "--teacher_workdir", default="", help="a finished score-matching run (one variant only)"
    )
    parser.add_argument("--override", nargs="*", default=[], help="config fields, a.b=value")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.teacher_workdir and "," in args.variants:
        parser.error("--teacher_workdir needs a single variant")
    load_before = _load()
    print(f"before: {load_before}", flush=True)
    start = time.perf_counter()
    # One cache for every variant and seed: the seeds of a variant compile its programs once.
    cache = exp.RunCache()
    summary: dict = {}
    lines = []
    for variant in args.variants.split(","):
        t0 = time.perf_counter()
        tdir = args.teacher_workdir or _teacher(variant, args.root, args.teacher_steps)
        teacher_seconds = time.perf_counter() - t0
        per_seed = []
        for seed in seeds:
            config = distill_configs.get_config(variant)
            with config.unlocked():
                config.seed = seed
                config.teacher.workdir = tdir
                for o in args.override:
                    _set(config, o)
            config.lock()
            workdir = os.path.join(args.root, variant, f"seed{seed}")
            per_seed.append(exp.train_and_evaluate(config, workdir, cache))
        lines += _variant_lines(variant, per_seed, seeds, summary, teacher_seconds)
    load_after = _load()
    lines.append(
        f"Wall time of this call: {time.perf_counter() - start:.0f} s; {load_before} before, "
        f"{load_after} after."
    )
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.root, exist_ok=True)
    name = "convergence_" + args.variants.replace(",", "_")
    with open(os.path.join(args.root, name + ".md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.root, name + ".json"), "w") as f:
        json.dump(summary, f, indent=1)


def _variant_lines(
    variant: str, per_seed: list[dict], seeds: list[int], summary: dict, teacher_seconds: float
) -> list[str]:
    """The markdown tables of one regime; its numbers also go into `summary[variant]`."""
    n = len(seeds)
    methods = list(per_seed[0]["comparison"]["methods"])
    first = per_seed[0]["comparison"]["methods"][methods[0]]
    columns = [c for c in exp.TABLE_COLUMNS if c[0] in first]
    rows = {}
    for m in methods:
        rs = [r["comparison"]["methods"][m] for r in per_seed]
        rows[m] = {
            key: _mean_std([r.get(key) for r in rs])
            for key in [c[0] for c in columns]
            + ["updates_to_baseline_mmd", "ratio_to_baseline", "train_seconds", "num_switches"]
        }
        rows[m]["baseline"] = rs[0]["baseline"]
    stage1 = [r["stage1"] for r in per_seed if r["stage1"]]
    mismatch = [r["step0_mismatch"] for r in per_seed if r.get("step0_mismatch")]
    summary[variant] = {
        "rows": rows,
        "stage1_steps": stage1[0]["steps"] if stage1 else 0,
        "path_distances": [s["distances"] for s in stage1],
        "step0_mismatch_g0": _mean_std([m["g0"] for m in mismatch]),
        "step0_mismatch_data": _mean_std([m["data"] for m in mismatch]),
        "teacher_seconds": teacher_seconds,
        "seeds": seeds,
        "baseline_levels": [r["comparison"]["baseline_levels"] for r in per_seed],
    }
    s = summary[variant]
    lines = [f"### `{variant}` ({n} seeds, mean ± std)", ""]
    if mismatch:
        g0, data = s["step0_mismatch_g0"], s["step0_mismatch_data"]
        lines.append(
            "Teacher's score mismatch at step 0, E sigma^2 ||s_teacher - s*||^2: "
            f"{_fmt(*g0[:2])} on G0's diffused samples, {_fmt(*data[:2])} on diffused data "
            f"(ratio {g0[0] / data[0]:.3g})."
        )
    if stage1:
        d = np.asarray(s["path_distances"])
        lines.append(
            f"Stage 1: {s['stage1_steps']} updates; path distances to the teacher (mean over "
            f"seeds): {', '.join(f'{x:.3g}' for x in d.mean(0))}."
        )
    lines += [
        "",
        "| method | baseline | updates to within "
        f"{exp.REACH_TOLERANCE:.0%} of the baseline's final MMD^2 (seeds) | ratio | "
        + " | ".join(h for _, h, _ in columns)
        + " | switches |",
        "|---" * (len(columns) + 5) + "|",
    ]
    for m, r in rows.items():
        reach = r["updates_to_baseline_mmd"]
        lines.append(
            f"| {m} | {r['baseline']} | {_fmt(*reach[:2], '{:.0f}')} ({reach[2]}/{n}) | "
            f"{_fmt(*r['ratio_to_baseline'][:2], '{:.2f}')} | "
            + " | ".join(_fmt(*r[k][:2], f) for k, _, f in columns)
            + f" | {_fmt(*r['num_switches'][:2], '{:.0f}')} |"
        )
    null = per_seed[0]["null"]
    reference = "train split" if "kid" in null else "two true sample sets"
    lines.append(
        f"| {reference} | | | | "
        + " | ".join(f.format(null[k]) if k in null else "-" for k, _, f in columns)
        + " | |"
    )
    lines.append("")
    return lines


if __name__ == "__main__":
    main()
