"""Convergence benchmark: generator updates DisBack needs to reach Diff-Instruct's final MMD.

For each variant (`gmm8`, `grid`) one teacher is trained (or reused) in `<root>/<variant>/teacher`,
then `configs/distill.py:<variant>` runs every method for each seed in `<root>/<variant>/seed<s>`
(finished runs are reused, interrupted ones resumed). Per method it prints the updates needed to
bring the smoothed MMD^2 within `experiments.distill.REACH_TOLERANCE` of Diff-Instruct's final
MMD^2 and the ratio of that count to Diff-Instruct's own (DisBack's goal: <= 0.5), then the final
MMD^2, sliced W2, energy distance, mode coverage, in-mode fraction and teacher score mismatch, all
as mean +- standard deviation over seeds, plus the stage-1 cost and the wall time of this call.
The tables are also written to `<root>/convergence_<variants>.md` and `.json`.

    .venv/bin/python -m experiments.benchmarks.distill_convergence [--variants gmm8,grid]
        [--seeds 0,1,2] [--root runs/bench_distill] [--override distill.num_steps=3000 ...]

Runs counted as never reaching the level enter the ratio as missing (reported as `n_reached`).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from configs import distill as distill_configs
from configs import score_matching as sm_configs
from experiments import distill as exp
from experiments import score_matching as sm_exp


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
    c = sm_configs.get_config(variant)
    with c.unlocked():
        c.train.num_steps = teacher_steps or distill_configs.get_config(variant).teacher.num_steps
        c.train.checkpoint_every = c.train.num_steps
    if not os.path.exists(os.path.join(tdir, sm_exp.EVAL_FILE)):  # not finished yet
        sm_exp.train_and_evaluate(c, tdir)
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
    parser.add_argument("--override", nargs="*", default=[], help="config fields, a.b=value")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    summary: dict = {}
    lines = []
    for variant in args.variants.split(","):
        t0 = time.perf_counter()
        tdir = _teacher(variant, args.root, args.teacher_steps)
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
        rows = {}
        for m in methods:
            rs = [r["comparison"]["methods"][m] for r in per_seed]
            rows[m] = {
                key: _mean_std([r.get(key) for r in rs])
                for key in (
                    "mmd2",
                    "sliced_w2",
                    "energy",
                    "mode_coverage",
                    "in_mode_fraction",
                    "score_mismatch",
                    "updates_to_baseline_mmd",
                    "ratio_to_baseline",
                    "train_seconds",
                )
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
            "| method | MMD^2 | sliced W2 | energy | mode coverage | in-mode fraction | "
            "score mismatch |",
            "|---|---|---|---|---|---|---|",
        ]
        for m, r in rows.items():
            lines.append(
                f"| {m} | {_fmt(*r['mmd2'][:2], '{:.2e}')} | {_fmt(*r['sliced_w2'][:2])} | "
                f"{_fmt(*r['energy'][:2], '{:.2e}')} | {_fmt(*r['mode_coverage'][:2])} | "
                f"{_fmt(*r['in_mode_fraction'][:2])} | {_fmt(*r['score_mismatch'][:2])} |"
            )
        null = per_seed[0]["null"]
        lines.append(
            f"| two true sample sets | {null['mmd2']:.2e} | {null['sliced_w2']:.3g} | "
            f"{null['energy']:.2e} | {null['mode_coverage']:.3g} | "
            f"{null['in_mode_fraction']:.3g} | - |"
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
