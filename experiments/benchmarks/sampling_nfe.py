"""Sample quality against NFE for every sampler of the Gaussian-path family, on `gmm8`, in one run.

Command (3.3 min on the otherwise idle 2-core CPU, load average 2.1 before and 2.2 after; 4.7 min
at load 5-9; most of it sampling with the trained model; `runs/gmm8_edm` already trained, 41 s
on the idle machine):

    nice -n 10 .venv/bin/python -m experiments.benchmarks.sampling_nfe \
        --workdir=runs/gmm8_edm [--out_dir=runs/sampling_nfe] [--num_samples=4000] [--seeds=2]

Samplers, each at several step counts (NFE = network evaluations):

- Euler-Maruyama and predictor-corrector (one Langevin corrector step, snr 0.16) on the VP SDE
  (beta 0.1 -> 20, t from 1 to 1e-3), and the probability-flow ODE on the VP SDE with Tsit5 at
  several tolerances (`scorejax.sampling`, `scorejax.ode`);
- EDM's Heun sampler (Algorithm 1; sigma 80 -> 0.002, rho 7; `scorejax.edm_sampling`);
- flow-matching Euler and Heun on the linear path (`scorejax.flow_matching`).

Each runs with two models of the 8-Gaussian ring (`scorejax.analytic.ring8`):

- "exact": the mixture oracle through each sampler's own path: the exact VP score, the exact EDM
  denoiser, the exact linear-path velocity (`experiments.score_matching.exact_model`);
- "model": the EMA network of a `configs/score_matching.py:gmm8_edm` run (an EDM-preconditioned
  MLP trained with the EDM loss), restored from `--workdir` or trained there first at its config
  size. Its denoiser drives EDM Heun directly; `scorejax.edm.from_edm_denoiser` turns it into the
  VP score for EM / PC / PF-ODE, and `scorejax.flow_matching.velocity_from_denoiser` into the
  linear-path velocity for the FM samplers.

Quality, averaged over `--seeds` sampler seeds of `--num_samples` samples: the NLL gap
`mean(-log p0(samples)) - mean(-log p0(true samples))` under the exact ring density (nats; as in
`experiments/benchmarks/pf_ode_vs_em.py`: blurred modes give a positive gap, over-concentrated
ones a negative gap), and the unbiased RBF MMD^2 to fresh true samples (bandwidths fixed from two
true sample sets). "null" is each measure between two true sample sets. It prints the table, the
load average before and after, and the verdict on the issue's goal (EDM Heun at 35 NFE matches PC
at 500 NFE: its |NLL gap| and MMD^2 are no worse than PC's, or than the null level, beyond two
seed standard errors), and writes `sampling_nfe.png`, `sampling_nfe.md` and `sampling_nfe.json`
into `--out_dir`.

Measured (4000 samples x 2 seeds; the gmm8_edm run of `configs/score_matching.py`; null: NLL
gap +0.039, MMD^2 -0.0004). Goal MET with both the exact mixture and the trained network:

- exact: EDM Heun 35 NFE NLL gap +0.031, MMD^2 -0.0003; PC 500 NFE +0.016, -0.0005. |NLL gap|
  reaches the null level 0.039 with EDM Heun at 35 NFE (25 NFE: +0.091), PC at 50, FM Euler at
  100, FM Heun at 99 (-0.10 at 49: the uniform t grid ends with a long Euler step from t = 1 / N
  that over-sharpens the modes), the PF-ODE (Tsit5) at 115 and EM at 500 (-0.054 at 250: coarse
  EM over-concentrates).
- trained gmm8_edm network: EDM Heun 35 NFE NLL gap +0.107, MMD^2 -0.0003; PC 500 NFE -0.464,
  +0.0001. Through its native denoiser the network matches its exact-score counterpart within
  0.1 nats from 35 NFE; converted to the VP score, every VP sampler over-concentrates (EM and PC
  about -0.45 to -0.6 nats at any NFE, the PF-ODE -0.98 with MMD^2 0.002): the VP grid spends
  its last steps at sigma around 0.01, where the EDM loss hardly trains the network (relative
  squared score error 0.5 to 13 there), while EDM's rho = 7 steps cross that range in one step.
  Converted to the linear-path velocity it does well: FM Euler within +-0.02 nats from 25 NFE.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs.score_matching import get_config
from experiments import score_matching as sm_exp
from scorejax import edm_sampling, flow_matching
from scorejax import metrics as sm
from scorejax.analytic import ring8
from scorejax.sampling import euler_maruyama, predictor_corrector, probability_flow_ode
from scorejax.score_sdes import VPSDE
from scorejax.train import prepare_workdir

_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/gmm8_edm", "A gmm8_edm run (restored, or trained there at config size)."
)
_OUT = flags.DEFINE_string("out_dir", "runs/sampling_nfe", "Where the PNG, table and JSON go.")
_NUM = flags.DEFINE_integer("num_samples", 4000, "Samples per sampler run.")
_SEEDS = flags.DEFINE_integer("seeds", 2, "Sampler seeds averaged per setting.")
_EM = flags.DEFINE_list("em_steps", ["25", "50", "100", "250", "500", "1000"], "EM steps.")
_PC = flags.DEFINE_list("pc_steps", ["10", "25", "50", "125", "250", "500"], "PC steps.")
_TOLS = flags.DEFINE_list("ode_tols", ["1e-2", "1e-3", "1e-4", "1e-5"], "PF-ODE rtol = atol.")
_EDM = flags.DEFINE_list("edm_steps", ["5", "9", "13", "18", "25", "35", "50"], "EDM Heun N.")
_FM_EULER = flags.DEFINE_list("fm_euler_steps", ["10", "25", "50", "100", "200"], "FM Euler N.")
_FM_HEUN = flags.DEFINE_list("fm_heun_steps", ["5", "9", "13", "18", "25", "50"], "FM Heun N.")

T_EPS = 1e-3
VP = VPSDE()
SamplerFn = Callable[[Any, jax.Array, tuple[int, ...]], tuple[jax.Array, Any]]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One sampler at one step count or tolerance: `run(model, params, key, shape)`."""

    sampler: str
    label: str
    run: Callable[[sm_exp.Model, Any, jax.Array, tuple[int, ...]], tuple[jax.Array, Any]]


def settings() -> list[Setting]:
    """Every (sampler, step count) of the flags, in table order."""
    out = []
    for n in map(int, _EM.value):
        out.append(
            Setting(
                "EM (VP)",
                f"{n} steps",
                lambda m, p, k, s, n=n: euler_maruyama(
                    m.score_fn, p, k, sde=VP, shape=s, num_steps=n, t_eps=T_EPS
                ),
            )
        )
    for n in map(int, _PC.value):
        out.append(
            Setting(
                "PC (VP)",
                f"{n} steps",
                lambda m, p, k, s, n=n: predictor_corrector(
                    m.score_fn, p, k, sde=VP, shape=s, num_steps=n, t_eps=T_EPS
                ),
            )
        )
    for tol in map(float, _TOLS.value):
        out.append(
            Setting(
                "PF-ODE Tsit5 (VP)",
                f"tol {tol:.0e}",
                lambda m, p, k, s, tol=tol: probability_flow_ode(
                    m.score_fn, p, k, sde=VP, shape=s, t_eps=T_EPS, rtol=tol, atol=tol
                ),
            )
        )
    for n in map(int, _EDM.value):
        out.append(
            Setting(
                "EDM Heun",
                f"{n} steps",
                lambda m, p, k, s, n=n: edm_sampling.heun_sampler(
                    m.denoiser_fn, p, k, shape=s, num_steps=n
                ),
            )
        )
    for n in map(int, _FM_EULER.value):
        out.append(
            Setting(
                "FM Euler",
                f"{n} steps",
                lambda m, p, k, s, n=n: flow_matching.euler_sampler(
                    m.velocity_fn, p, k, shape=s, num_steps=n
                ),
            )
        )
    for n in map(int, _FM_HEUN.value):
        out.append(
            Setting(
                "FM Heun",
                f"{n} steps",
                lambda m, p, k, s, n=n: flow_matching.heun_sampler(
                    m.velocity_fn, p, k, shape=s, num_steps=n
                ),
            )
        )
    return out


def trained_model(workdir: str) -> tuple[sm_exp.Model, Any]:
    """The gmm8_edm EMA network of `workdir` (trained there first if it has no final checkpoint)."""
    config = get_config("gmm8_edm")
    setup = sm_exp.build(config)
    workdir = str(prepare_workdir(config, workdir, defaults=sm_exp.RECORD_DEFAULTS))
    state = sm_exp.train(setup, config, workdir)
    return setup.model, state.ema_params


def _mean_sem(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values)
    sem = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0
    return float(a.mean()), sem


def measure(
    model: sm_exp.Model, params: Any, setting: Setting, quality, n: int, seeds: int
) -> dict[str, Any]:
    """NFE, NLL gap and MMD^2 (mean and standard error over seeds) and the best wall time."""
    fn = jax.jit(lambda p, k: setting.run(model, p, k, (n, 2)))
    gaps, mmds, seconds, nfe = [], [], [], None
    for seed in range(seeds):
        t0 = time.perf_counter()
        x, nfe_seed = jax.block_until_ready(fn(params, jax.random.key(1000 + seed)))
        seconds.append(time.perf_counter() - t0)
        nfe = int(nfe_seed) if nfe is None else max(nfe, int(nfe_seed))
        gap, mmd2 = quality(x)
        gaps.append(gap)
        mmds.append(mmd2)
    (gap, gap_sem), (mmd2, mmd_sem) = _mean_sem(gaps), _mean_sem(mmds)
    return {
        "sampler": setting.sampler,
        "setting": setting.label,
        "nfe": nfe,
        "nll_gap": gap,
        "nll_gap_sem": gap_sem,
        "mmd2": mmd2,
        "mmd2_sem": mmd_sem,
        # The first call compiles; later seeds time the sampler alone.
        "ms": 1e3 * (min(seconds[1:]) if seeds > 1 else seconds[0]),
    }


def _goal(rows: list[dict], null: dict) -> tuple[str, dict | None, dict | None]:
    """Does EDM Heun at 35 NFE match PC at 500 NFE (on both measures, within 2 seed SEMs)?"""
    heun = next((r for r in rows if r["sampler"] == "EDM Heun" and r["nfe"] == 35), None)
    pc = next((r for r in rows if r["sampler"] == "PC (VP)" and r["nfe"] == 500), None)
    if heun is None or pc is None:
        return "not measured (needs --edm_steps with 18 and --pc_steps with 250)", heun, pc
    tol_gap = 2 * math.hypot(heun["nll_gap_sem"], pc["nll_gap_sem"])
    tol_mmd = 2 * math.hypot(heun["mmd2_sem"], pc["mmd2_sem"])
    ok_gap = abs(heun["nll_gap"]) <= max(abs(pc["nll_gap"]), abs(null["nll_gap"])) + tol_gap
    ok_mmd = heun["mmd2"] <= max(pc["mmd2"], abs(null["mmd2"])) + tol_mmd
    verdict = "MET" if ok_gap and ok_mmd else "NOT MET"
    return (
        (
            f"{verdict}: EDM Heun 35 NFE NLL gap {heun['nll_gap']:+.4f}, MMD^2 "
            f"{heun['mmd2']:.2e}; PC 500 NFE NLL gap {pc['nll_gap']:+.4f}, MMD^2 "
            f"{pc['mmd2']:.2e} (tolerances {tol_gap:.4f}, {tol_mmd:.1e})"
        ),
        heun,
        pc,
    )


def table(results: dict[str, list[dict]], null: dict) -> str:
    """The results as a markdown table."""
    lines = [
        "| score | sampler | setting | NFE | NLL gap (nats) | MMD^2 | ms |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for who, rows in results.items():
        for r in rows:
            lines.append(
                f"| {who} | {r['sampler']} | {r['setting']} | {r['nfe']} | "
                f"{r['nll_gap']:+.4f} +- {r['nll_gap_sem']:.4f} | "
                f"{r['mmd2']:.2e} +- {r['mmd2_sem']:.1e} | {r['ms']:.0f} |"
            )
    lines.append(
        f"| null | two true sample sets | - | - | {null['nll_gap']:+.4f} | {null['mmd2']:.2e} | - |"
    )
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], null: dict, path: str) -> None:
    """|NLL gap| and MMD^2 against NFE, one line per sampler, exact solid and model dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    samplers = list(dict.fromkeys(r["sampler"] for rows in results.values() for r in rows))
    colors = dict(zip(samplers, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    panels = ((axes[0], "nll_gap", "|NLL gap| (nats)"), (axes[1], "mmd2", "|MMD$^2$|"))
    for ax, key, label in panels:
        for who, style in (("exact", "-"), ("model", "--")):
            for name in samplers:
                rows = sorted(
                    (r for r in results.get(who, []) if r["sampler"] == name),
                    key=lambda r: r["nfe"],
                )
                if rows:
                    ax.plot(
                        [r["nfe"] for r in rows],
                        [max(abs(r[key]), 1e-6) for r in rows],
                        style,
                        marker="o",
                        ms=3,
                        color=colors[name],
                        label=f"{name}, {who}",
                    )
        ax.axhline(max(abs(null[key]), 1e-6), color="k", ls=":", label="two true sets")
        ax.axvline(35, color="grey", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel=label)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(
        "gmm8 (ring8): sample quality against NFE; solid = exact mixture, dashed = "
        "trained gmm8_edm network; grey line: 35 NFE",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    load_before = os.getloadavg()
    print(
        f"jax {jax.__version__}, {os.cpu_count()} cores, load average before {load_before}",
        flush=True,
    )
    n, seeds = _NUM.value, _SEEDS.value
    gm = ring8()
    truth, other = gm.sample(jax.random.key(100), n), gm.sample(jax.random.key(101), n)
    bandwidths = sm.median_bandwidth(truth, other) * jnp.asarray(sm.DEFAULT_BANDWIDTH_MULTIPLIERS)
    mmd = jax.jit(lambda x: sm.mmd2_rbf(x, truth, bandwidths=bandwidths))
    nll = jax.jit(lambda x: -jnp.mean(gm.log_prob(x)))
    base = float(nll(truth))
    quality = lambda x: (float(nll(x)) - base, float(mmd(x)))
    null_gap, null_mmd = quality(other)
    null = {"nll_gap": null_gap, "mmd2": null_mmd}

    t0 = time.perf_counter()
    model, params = trained_model(_WORKDIR.value)
    train_s = time.perf_counter() - t0
    models = {"exact": (sm_exp.exact_model(gm, VP), None), "model": (model, params)}
    results: dict[str, list[dict]] = {}
    for who, (fns, p) in models.items():
        results[who] = []
        for setting in settings():
            row = measure(fns, p, setting, quality, n, seeds)
            results[who].append(row)
            print(
                f"{who:5s} {row['sampler']:18s} {row['setting']:11s} NFE {row['nfe']:5d}  "
                f"NLL gap {row['nll_gap']:+.4f}  MMD^2 {row['mmd2']:.2e}  {row['ms']:.0f} ms",
                flush=True,
            )
    load_after = os.getloadavg()

    md = table(results, null)
    goals = {who: _goal(rows, null)[0] for who, rows in results.items()}
    summary = [
        f"load average before {load_before}, after {load_after}; {n} samples x {seeds} seeds; "
        f"model restore/training {train_s:.0f} s",
        *(
            f"goal (EDM Heun 35 NFE matches PC 500 NFE), {who} score: {g}"
            for who, g in goals.items()
        ),
    ]
    print("\n" + md + "\n\n" + "\n".join(summary), flush=True)
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, "sampling_nfe.md"), "w") as f:
        f.write(md + "\n\n" + "\n".join(summary) + "\n")
    with open(os.path.join(_OUT.value, "sampling_nfe.json"), "w") as f:
        json.dump(
            {
                "results": results,
                "null": null,
                "goal": goals,
                "load_before": load_before,
                "load_after": load_after,
                "num_samples": n,
                "seeds": seeds,
            },
            f,
            indent=1,
        )
    plot(results, null, os.path.join(_OUT.value, "sampling_nfe.png"))


if __name__ == "__main__":
    app.run(main)
