"""Convergence benchmark: generator updates DisBack needs to reach Diff-Instruct's final MMD.

For each variant (`gmm8`, `grid`, `digits`) one teacher is trained (or reused) in
`<root>/<variant>/teacher` (or taken from `--teacher_workdir`, one variant only), then
`configs/distill.py:<variant>` runs every method for each seed in `<root>/<variant>/seed<s>`
(finished runs are reused, interrupted ones resumed). Per method it prints the updates needed to
bring the smoothed MMD^2 within `experiments.distill.REACH_TOLERANCE` of Diff-Instruct's final
MMD^2 and the ratio of that count to Diff-Instruct's own (DisBack's goal: <= 0.5), then the final
metrics of `experiments.distill.TABLE_COLUMNS` the variant has (MMD^2, sliced W2, energy
distance, mode coverage, and in-mode fraction and teacher score mismatch for mixtures, KID and
confident rate for images), all as mean +- standard deviation over seeds, plus the stage-1 cost
and the wall time of this call. The tables are also written to
`<root>/convergence_<variants>.md` and `.json`.

    .venv/bin/python -m experiments.benchmarks.distill_convergence [--variants gmm8,grid]
        [--seeds 0,1,2] [--root runs/bench_distill] [--teacher_workdir runs/digits_vp]
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
    tdir = os.path.join(root, variant, "teacher")
    t = distill_configs.get_config(variant).teacher
    c = importlib.import_module(f"configs.{t.config_module}").get_config(t.variant)
    with c.unlocked():
        c.train.num_steps = teacher_steps or t.num_steps
        c.train.checkpoint_every = c.train.num_steps
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="gmm8,grid")
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
    start = time.perf_counter()
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
            per_seed.append(exp.train_and_evaluate(config, workdir))
        methods = list(per_seed[0]["comparison"]["methods"])
        first = per_seed[0]["comparison"]["methods"][methods[0]]
        columns = [c for c in exp.TABLE_COLUMNS if c[0] in first]
        rows = {}
        for m in methods:
            rs = [r["comparison"]["methods"][m] for r in per_seed]
            rows[m] = {
                key: _mean_std([r.get(key) for r in rs])
                for key in [c[0] for c in columns]
                + ["updates_to_baseline_mmd", "ratio_to_baseline", "train_seconds"]
            }
        stage1 = [r["stage1"] for r in per_seed if r["stage1"]]
        summary[variant] = {
            "rows": rows,
            "stage1_steps": stage1[0]["steps"] if stage1 else 0,
            "stage1_seconds": _mean_std([s["seconds"] for s in stage1]),
            "teacher_seconds": teacher_seconds,
            "seeds": seeds,
            "baseline_levels": [r["comparison"]["baseline_level_mmd2"] for r in per_seed],
        }
        n = len(seeds)
        lines += [
            f"### `{variant}`: convergence ({n} seeds, mean ± std)",
            "",
            f"| method | updates to within {exp.REACH_TOLERANCE:.0%} of DI's final MMD^2 "
            "(seeds reaching it) | ratio to DI | stage-2 s |",
            "|---|---|---|---|",
        ]
        for m, r in rows.items():
            reach = r["updates_to_baseline_mmd"]
            lines.append(
                f"| {m} | {_fmt(*reach[:2], '{:.0f}')} ({reach[2]}/{n}) | "
                f"{_fmt(*r['ratio_to_baseline'][:2], '{:.2f}')} | "
                f"{_fmt(*r['train_seconds'][:2], '{:.0f}')} |"
            )
        lines += [
            "",
            f"### `{variant}`: final quality ({n} seeds, mean ± std)",
            "",
            "| method | " + " | ".join(h for _, h, _ in columns) + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        for m, r in rows.items():
            lines.append(f"| {m} | " + " | ".join(_fmt(*r[k][:2], f) for k, _, f in columns) + " |")
        null = per_seed[0]["null"]
        reference = "train split" if "kid" in null else "two true sample sets"
        lines.append(
            f"| {reference} | "
            + " | ".join(f.format(null[k]) if k in null else "-" for k, _, f in columns)
            + " |"
        )
        s1 = summary[variant]
        lines += [
            "",
            f"Stage 1: {s1['stage1_steps']} fake-score updates, "
            f"{_fmt(*s1['stage1_seconds'][:2], '{:.0f}')} s.",
            "",
        ]
    lines.append(f"Wall time of this call: {time.perf_counter() - start:.0f} s.")
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.root, exist_ok=True)
    name = "convergence_" + args.variants.replace(",", "_")
    with open(os.path.join(args.root, name + ".md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.root, name + ".json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
