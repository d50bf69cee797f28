"""The coverage study's tasks: problem families, their data and their students.

A `Task` bundles one family's data generator (train / validation / test splits of problems with a
single reference answer each), its student's initialisation, the log-probability of the reference
answer at a temperature, the greedy answer and, for `arithmetic`, a sampler. `make_task` builds
the one of `config.task.kind` (`teacher_student`: a linear softmax student of a softmax teacher;
`sequences`: L-token answers from an autoregressive teacher; `arithmetic`: a tiny causal
transformer on `arithmetic_problems`); `per_seed_data` draws every seed's splits at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scorejax.logprobs import sequence_logprob, token_logprobs
from scorejax.models.transformer import TransformerLM, sample
from scorejax.train.precision import Precision, precision_from_config

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Task:
    """One problem family and its student model.

    Attributes:
      name: the variant.
      make_data: key -> {"train": Batch, "val": Batch, "test": Batch} for one seed; every Batch
        leaf has the problem axis first.
      init: key -> parameters of one student.
      seq_logp: (params, batch, temperature) -> (n,) log p_T(reference answer | problem).
      greedy: (params, batch) -> ((n,) probability of the greedy answer, (n,) bool it is right).
      sample_correct: (params, batch, key, temperature, k) -> (n,) number of k sampled answers
        equal to the reference, or None when pass@N is only computed exactly.
      groups: names of boolean test-batch fields for per-group pass@N (e.g. "hard").
    """

    name: str
    make_data: Callable[[jax.Array], dict[str, Batch]]
    init: Callable[[jax.Array], Any]
    seq_logp: Callable[[Any, Batch, Any], jax.Array]
    greedy: Callable[[Any, Batch], tuple[jax.Array, jax.Array]]
    sample_correct: Callable[[Any, Batch, jax.Array, Any, int], jax.Array] | None
    groups: tuple[str, ...] = ()


def _split(arrays: Batch, sizes: tuple[int, int, int]) -> dict[str, Batch]:
    a, b = sizes[0], sizes[0] + sizes[1]
    return {
        "train": {k: v[:a] for k, v in arrays.items()},
        "val": {k: v[a:b] for k, v in arrays.items()},
        "test": {k: v[b:] for k, v in arrays.items()},
    }


def _linear_logits(precision: Precision, subscripts: str, features: jax.Array,
                   weights: jax.Array) -> jax.Array:
    """A linear student's logits `einsum(subscripts, features, weights)`, computed in the
    policy's compute dtype and returned in float32 (where the softmax and the loss run)."""
    features, weights = precision.cast_to_compute((features, weights))
    return precision.cast_to_output(jnp.einsum(subscripts, features, weights))


def _teacher_student_task(config, precision: Precision) -> Task:
    """Design A of the notes: x ~ N(0, I_d), teacher softmax(beta W* x / sqrt(d)) over K answers,
    one answer drawn per problem; the student is a zero-initialised linear softmax over raw x."""
    c = config.task
    sizes = (c.num_train, c.num_val, c.num_test)

    def make_data(key):
        w = jax.random.normal(jax.random.fold_in(key, 0), (c.dim, c.num_answers))
        x = jax.random.normal(jax.random.fold_in(key, 1), (sum(sizes), c.dim))
        y = jax.random.categorical(jax.random.fold_in(key, 2), c.beta * x @ w / np.sqrt(c.dim))
        return _split({"x": x, "y": y.astype(jnp.int32)}, sizes)

    def init(key):
        return jnp.zeros((c.dim, c.num_answers))

    def log_probs(w, x, temperature):
        return jax.nn.log_softmax(_linear_logits(precision, "nd,dk->nk", x, w) / temperature, -1)

    def seq_logp(w, batch, temperature):
        lp = log_probs(w, batch["x"], temperature)
        return jnp.take_along_axis(lp, batch["y"][:, None], axis=-1)[:, 0]

    def greedy(w, batch):
        lp = log_probs(w, batch["x"], 1.0)
        return jnp.exp(jnp.max(lp, -1)), jnp.argmax(lp, -1) == batch["y"]

    return Task("teacher_student", make_data, init, seq_logp, greedy, None)


def _sequence_features(x: jax.Array, y: jax.Array, vocab: int) -> jax.Array:
    """[x, onehot(y_{t-1}), onehot(y_{t-2})] per answer position: (n, d) x (n, L) -> (n, L, f)."""
    oh = jax.nn.one_hot(y, vocab)
    prev1 = jnp.concatenate([jnp.zeros_like(oh[:, :1]), oh[:, :-1]], 1)
    prev2 = jnp.concatenate([jnp.zeros_like(oh[:, :2]), oh[:, :-2]], 1)
    xs = jnp.broadcast_to(x[:, None, :], (*y.shape, x.shape[-1]))
    return jnp.concatenate([xs, prev1, prev2], -1)


def _sequences_task(config, precision: Precision) -> Task:
    """Design B of the notes: L-token answers over a vocabulary V from an autoregressive teacher
    softmax(beta (A_t x / sqrt(d) + B_t [onehot(y_{t-1}), onehot(y_{t-2})])); the student is a
    zero-initialised linear map per position on [x, onehot(y_{t-1}), onehot(y_{t-2})]."""
    c = config.task
    sizes = (c.num_train, c.num_val, c.num_test)
    vocab, length, dim = c.vocab, c.answer_len, c.dim
    feat = dim + 2 * vocab

    def make_data(key):
        a = jax.random.normal(jax.random.fold_in(key, 0), (length, dim, vocab))
        b = jax.random.normal(jax.random.fold_in(key, 1), (length, 2 * vocab, vocab))
        x = jax.random.normal(jax.random.fold_in(key, 2), (sum(sizes), dim))
        y = jnp.zeros((sum(sizes), length), jnp.int32)
        for t in range(length):
            f = _sequence_features(x, y, vocab)[:, t]
            logits = c.beta * (f[:, :dim] @ a[t] / np.sqrt(dim) + f[:, dim:] @ b[t])
            y = y.at[:, t].set(jax.random.categorical(jax.random.fold_in(key, 3 + t), logits))
        return _split({"x": x, "y": y}, sizes)

    def init(key):
        return jnp.zeros((length, feat, vocab))

    def seq_logp(w, batch, temperature):
        features = _sequence_features(batch["x"], batch["y"], vocab)
        logits = _linear_logits(precision, "nlf,lfv->nlv", features, w)
        mask = jnp.ones(batch["y"].shape, bool)
        return sequence_logprob(token_logprobs(logits, batch["y"], temperature=temperature), mask)

    def greedy(w, batch):
        x = batch["x"]
        y = jnp.zeros((x.shape[0], length), jnp.int32)
        logp = jnp.zeros(x.shape[0])
        for t in range(length):
            features = _sequence_features(x, y, vocab)[:, t]
            lp = jax.nn.log_softmax(_linear_logits(precision, "nf,fv->nv", features, w[t]), -1)
            y = y.at[:, t].set(jnp.argmax(lp, -1))
            logp = logp + jnp.max(lp, -1)
        return jnp.exp(logp), jnp.all(y == batch["y"], -1)

    return Task("sequences", make_data, init, seq_logp, greedy, None)


# Arithmetic vocabulary: digits 0-9, then the two operators and '='.
_PLUS, _QUERY, _EQUALS, _ARITH_VOCAB = 10, 11, 12, 13
_PROMPT_LEN, _ANSWER_LEN = 6, 3


def arithmetic_problems(key: jax.Array, num: int, hard_fraction: float) -> Batch:
    """Synthetic arithmetic with learnable and ambiguous problems (heterogeneous difficulty).

    Prompt "a1 a2 op b1 b2 =" for distinct two-digit pairs (a, b), answer three digits:
    - op '+' (learnable): (a1, b2, (a2 + b1) mod 10): two copies and one digit sum;
    - op '?' (ambiguous): (a1, s1, s2) with a hidden salt s1 s2 drawn uniformly per problem, so
      that no model can beat p = 1/100 on unseen '?' problems (pass@N <= 1 - 0.99^N).
    Returns tokens (num, 9) int32 and hard (num,) bool.
    """
    pairs = jax.random.choice(jax.random.fold_in(key, 0), 10000, (num,), replace=False)
    a, b = pairs // 100, pairs % 100
    a1, a2, b1, b2 = a // 10, a % 10, b // 10, b % 10
    hard = jax.random.uniform(jax.random.fold_in(key, 1), (num,)) < hard_fraction
    salt = jax.random.randint(jax.random.fold_in(key, 2), (num, 2), 0, 10)
    easy = jnp.stack([a1, b2, (a2 + b1) % 10], 1)
    ambiguous = jnp.concatenate([a1[:, None], salt], 1)
    answer = jnp.where(hard[:, None], ambiguous, easy)
    op = jnp.where(hard, _QUERY, _PLUS)
    prompt = jnp.stack([a1, a2, op, b1, b2, jnp.full_like(a1, _EQUALS)], 1)
    return {"tokens": jnp.concatenate([prompt, answer], 1).astype(jnp.int32), "hard": hard}


def _arithmetic_task(config, precision: Precision) -> Task:
    """The tiny causal transformer on `arithmetic_problems` (float32 logits whatever the
    policy's compute dtype)."""
    c, m = config.task, config.model
    sizes = (c.num_train, c.num_val, c.num_test)
    model = TransformerLM(
        vocab_size=_ARITH_VOCAB,
        max_len=_PROMPT_LEN + _ANSWER_LEN,
        d_model=m.d_model,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        mlp_ratio=m.mlp_ratio,
        **precision.module_kwargs(),
    )
    # logits[:, t] predicts tokens[:, t + 1]; the answer tokens are positions >= P.
    answer_mask = np.arange(_PROMPT_LEN + _ANSWER_LEN - 1) >= _PROMPT_LEN - 1

    def make_data(key):
        return _split(arithmetic_problems(key, sum(sizes), c.hard_fraction), sizes)

    def init(key):
        return model.init(key, jnp.zeros((1, _PROMPT_LEN + _ANSWER_LEN), jnp.int32))

    def logp_of(params, tokens, temperature):
        logits = model.apply(params, tokens[:, :-1])
        mask = jnp.broadcast_to(answer_mask, tokens[:, 1:].shape)
        return sequence_logprob(
            token_logprobs(logits, tokens[:, 1:], temperature=temperature), mask
        )

    def seq_logp(params, batch, temperature):
        return logp_of(params, batch["tokens"], temperature)

    def greedy(params, batch):
        prompt = batch["tokens"][:, :_PROMPT_LEN]
        ans = sample(partial(model.apply, params), prompt, jax.random.key(0), _ANSWER_LEN, 0.0)
        logp = logp_of(params, jnp.concatenate([prompt, ans], 1), 1.0)
        return jnp.exp(logp), jnp.all(ans == batch["tokens"][:, _PROMPT_LEN:], -1)

    def sample_correct(params, batch, key, temperature, k):
        prompt = batch["tokens"][:, :_PROMPT_LEN]
        ref = batch["tokens"][:, _PROMPT_LEN:]
        reps = jnp.repeat(prompt, k, axis=0)
        ans = sample(partial(model.apply, params), reps, key, _ANSWER_LEN, temperature)
        hit = jnp.all(ans.reshape(prompt.shape[0], k, _ANSWER_LEN) == ref[:, None], -1)
        return jnp.sum(hit, -1)

    return Task("arithmetic", make_data, init, seq_logp, greedy, sample_correct, ("hard",))


def make_task(config: ml_collections.ConfigDict) -> Task:
    """The task of `config.task.kind`, its student computing under `config.precision`."""
    kind, precision = config.task.kind, precision_from_config(config)
    if kind == "teacher_student":
        return _teacher_student_task(config, precision)
    if kind == "sequences":
        return _sequences_task(config, precision)
    if kind == "arithmetic":
        return _arithmetic_task(config, precision)
    raise ValueError(f"unknown config.task.kind {kind!r}; known: teacher_student, sequences, "
                     "arithmetic")


def per_seed_data(task: Task, config: ml_collections.ConfigDict) -> dict[str, Batch]:
    """The splits of every seed of `config.num_seeds`, stacked: leaves (S seeds, problems, ...)."""
    root = jax.random.key(config.seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(config.num_seeds))
    return jax.jit(jax.vmap(task.make_data))(keys)
