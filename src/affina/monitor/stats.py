"""Two-sample tests for drift, on sentence embeddings and on plain text descriptors.

Each test compares a reference sample (the training data, or a baseline of served replies) with
a window of served traffic and returns its statistic, the threshold it is judged against and a
p-value where one exists. Thresholds of the embedding tests come from permutations of the pooled
sample (the null distribution of *this* window size), so small windows are judged fairly.

- `domain_classifier`: logistic regression told to separate reference from window embeddings;
  its out-of-fold ROC AUC is 0.5 when the two are alike (Rabanser et al. 2019, "Failing
  Loudly", arXiv:1810.11953). Threshold: the (1 - alpha) quantile of the AUC under label
  permutations.
- `mmd`: the unbiased squared maximum mean discrepancy with an RBF kernel (bandwidth: the median
  pairwise distance) and a permutation p-value (Gretton et al. 2012, JMLR 13).
- `ks`: two-sample Kolmogorov-Smirnov on a scalar (lengths).
- text descriptors: script (charset) mix as total variation distance, out-of-vocabulary rate
  against the reference vocabulary, refusal/empty rates.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

import numpy as np

__all__ = ["TestResult", "domain_classifier", "mmd", "ks", "script_of", "script_mix",
           "total_variation", "oov_rates", "words", "is_refusal", "nearest_distances"]


@dataclass
class TestResult:
    value: float
    threshold: float
    p_value: float | None = None
    scores: np.ndarray | None = None  # per-window-example scores, where the test has them


def _fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 25) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method (few dimensions after `_project`:
    each step is one small solve, so hundreds of permutation fits stay cheap). Returns weights
    with the bias last."""
    Xb = np.c_[X, np.ones(len(X))]  # (N, k+1)
    w = np.zeros(Xb.shape[1])
    reg = l2 * np.eye(len(w))
    reg[-1, -1] = 0.0  # the bias is not shrunk
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(Xb @ w, -30, 30)))
        grad = Xb.T @ (p - y) + reg @ w
        hess = (Xb * (p * (1 - p))[:, None]).T @ Xb + reg
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w


def _auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _oof_auc(X: np.ndarray, y: np.ndarray, folds: int, seed: int) -> tuple[float, np.ndarray]:
    """AUC of out-of-fold probabilities from stratified folds (fixed by `seed`)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), int)
    for label in (0, 1):
        where = np.flatnonzero(y == label)
        fold[rng.permutation(where)] = np.arange(len(where)) % folds
    probs = np.zeros(len(y))
    for k in range(folds):
        test = fold == k
        w = _fit_logistic(X[~test], y[~test].astype(float))
        probs[test] = 1.0 / (1.0 + np.exp(-np.clip(np.c_[X[test], np.ones(test.sum())] @ w, -30, 30)))
    return _auc(y, probs), probs


def _project(X: np.ndarray, dims: int = 32) -> np.ndarray:
    """The pooled sample on its first principal components: unsupervised (labels unseen, so
    the permutation null stays valid), and it makes each of the many fits cheap."""
    centred = X - X.mean(0)
    k = min(dims, min(X.shape) - 1)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:k].T  # (N, k)


def _one_thread():
    """BLAS on one thread for the many small solves: with several threads their start-up costs
    more than the work (3x slower measured on 2 cores)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # sklearn's dependency; without it the tests are slower, not different
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1)


def domain_classifier(ref: np.ndarray, win: np.ndarray, *, alpha: float, permutations: int,
                      seed: int) -> TestResult:
    """Out-of-fold AUC of reference-vs-window, against its permutation null."""
    with _one_thread():
        return _domain_classifier(ref, win, alpha=alpha, permutations=permutations, seed=seed)


def _domain_classifier(ref: np.ndarray, win: np.ndarray, *, alpha: float, permutations: int,
                       seed: int) -> TestResult:
    X = _project(np.vstack([ref, win]).astype(np.float64))
    y = np.r_[np.zeros(len(ref), int), np.ones(len(win), int)]
    folds = int(min(5, len(ref), len(win)))
    auc, probs = _oof_auc(X, y, folds, seed)
    rng = np.random.default_rng(seed)
    null = np.array([_oof_auc(X, rng.permutation(y), folds, seed)[0] for _ in range(permutations)])
    threshold = float(np.quantile(null, 1 - alpha))
    p = (1 + int(np.sum(null >= auc))) / (permutations + 1)
    return TestResult(auc, threshold, p, probs[len(ref):])


def _rbf(X: np.ndarray) -> np.ndarray:
    sq = np.sum(X * X, 1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * X @ X.T, 0.0)  # (N, N) squared distances
    off = d2[~np.eye(len(X), dtype=bool)]
    bandwidth2 = float(np.median(off)) or 1.0  # the median heuristic
    return np.exp(-d2 / bandwidth2)


def _mmd2(K: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² between index sets a and b of the pooled kernel matrix K."""
    Kaa, Kbb, Kab = K[np.ix_(a, a)], K[np.ix_(b, b)], K[np.ix_(a, b)]
    m, n = len(a), len(b)
    return float((Kaa.sum() - np.trace(Kaa)) / (m * (m - 1)) + (Kbb.sum() - np.trace(Kbb)) / (n * (n - 1))
                 - 2 * Kab.mean())


def mmd(ref: np.ndarray, win: np.ndarray, *, alpha: float, permutations: int, seed: int) -> TestResult:
    K = _rbf(np.vstack([ref, win]).astype(np.float64))
    m = len(ref)
    idx = np.arange(len(K))
    observed = _mmd2(K, idx[:m], idx[m:])
    rng = np.random.default_rng(seed)
    null = np.empty(permutations)
    for i in range(permutations):
        perm = rng.permutation(idx)
        null[i] = _mmd2(K, perm[:m], perm[m:])
    return TestResult(observed, float(np.quantile(null, 1 - alpha)),
                      (1 + int(np.sum(null >= observed))) / (permutations + 1))


def ks(ref: list[float], win: list[float], *, alpha: float) -> TestResult:
    """KS statistic D; its threshold is the critical D at `alpha` for these sample sizes."""
    from scipy.stats import ks_2samp

    result = ks_2samp(ref, win)
    n, m = len(ref), len(win)
    critical = float(np.sqrt(-np.log(alpha / 2) * 0.5) * np.sqrt((n + m) / (n * m)))
    return TestResult(float(result.statistic), critical, float(result.pvalue))


_SCRIPTS = (("LATIN", "latin"), ("CYRILLIC", "cyrillic"), ("GREEK", "greek"), ("ARABIC", "arabic"),
            ("HEBREW", "hebrew"), ("CJK", "cjk"), ("HIRAGANA", "kana"), ("KATAKANA", "kana"),
            ("HANGUL", "hangul"), ("DEVANAGARI", "devanagari"), ("THAI", "thai"))


def _char_script(ch: str) -> str:
    if ch.isdigit():
        return "digits"
    if not ch.isalpha():
        return "symbols"
    name = unicodedata.name(ch, "")
    for prefix, script in _SCRIPTS:
        if name.startswith(prefix):
            return script
    return "other letters"


def script_of(text: str) -> str:
    """The dominant script of a text's letters (`latin`, `cyrillic`, `cjk`...); digits or
    symbols when it has no letters; `empty` for nothing."""
    counts = Counter(_char_script(ch) for ch in text if not ch.isspace())
    if not counts:
        return "empty"
    letters = {k: v for k, v in counts.items() if k not in ("digits", "symbols")}
    return max((letters or counts).items(), key=lambda kv: (kv[1], kv[0]))[0]


def script_mix(texts: list[str]) -> dict[str, float]:
    counts = Counter(script_of(t) for t in texts)
    total = sum(counts.values()) or 1
    return {k: v / total for k, v in sorted(counts.items())}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def oov_rates(ref_texts: list[str], win_texts: list[str], seed: int) -> tuple[float, float]:
    """(baseline, window) out-of-vocabulary rates. The vocabulary is built from a random half of
    the reference; the baseline is the other half's rate against it, so a vocabulary's own
    sampling gap is not mistaken for drift."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ref_texts))
    half = max(1, len(order) // 2)
    vocab = {w for i in order[:half] for w in words(ref_texts[i])}

    def rate(texts):
        tokens = [w for t in texts for w in words(t)]
        return sum(w not in vocab for w in tokens) / len(tokens) if tokens else 0.0

    held = [ref_texts[i] for i in order[half:]] or [ref_texts[i] for i in order[:half]]
    return rate(held), rate(win_texts)


_REFUSAL = re.compile(r"^\s*(i'?m sorry|i am sorry|sorry,|i can(?:'|no)t|i cannot|i am unable|"
                      r"i'?m unable|i'?m not able|as an ai\b|i (?:do not|don'?t) (?:have|know))",
                      re.IGNORECASE)


def is_refusal(reply: str | None) -> bool:
    """An empty reply, or one that opens with a stock refusal."""
    return not (reply or "").strip() or bool(_REFUSAL.match(reply or ""))


def nearest_distances(ref: np.ndarray, win: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1 - the highest cosine similarity to any reference example, that example's index) per
    window example; embeddings are unit length."""
    sims = win @ ref.T  # (W, R)
    best = sims.argmax(1)
    return 1.0 - sims[np.arange(len(win)), best], best
