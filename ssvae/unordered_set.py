"""The unordered set estimator with its built-in baseline, for one discrete guide site.

Kool, van Hoof and Welling, "Estimating Gradients for Discrete Random Variables by Sampling
without Replacement" (ICLR 2020). For each example, with p = q(y|x) over K labels and the
per-label ELBO ``f(y) = E_{q(z|x,y)}[log p(x, y, z) - log q(z|x,y)] - log q(y|x)`` (as in
:mod:`ssvae.rb`), draw a set S of k distinct labels without replacement (Gumbel-top-k: the k
largest of ``log p(y) + Gumbel noise``) and use::

    ELBO(x)   ~  sum_{s in S} p(s) R(S, s) f(s),              R(S, s) = p^{D\\s}(S \\ {s}) / p(S)
    gradient  =  sum_{s in S} p(s) R(S, s) [ grad f(s) + (f(s) - B(S, s)) grad log p(s) ]
    B(S, s)   =  sum_{s' in S} p(s') R^{D\\s}(S, s') f(s'),
    R^{D\\s}(S, s') = p^{D\\{s,s'}}(S \\ {s, s'}) / p^{D\\s}(S \\ {s})        (= 1 for s' = s)

p(S) is the probability of drawing the set, in any order; p^{D\\A}(T) that of drawing T from p
with the labels A taken out and the rest renormalised. Why it is unbiased: for any g,
``E_S[sum_{s in S} p(s) R(S, s) g(s)] = sum_y p(y) g(y)`` (p(S) R(S, s) p(s) = p(s) p^{D\\s}(S \\ {s}):
the chance that s is drawn first, then the rest). B(S, s) is the paper's built-in baseline: the same
estimator of E_p[f] over the set given that it holds s (s's own term exactly, the others an
unordered set estimate for p without s), so its expectation given s is E_p[f] whatever s is, and
``sum_y p(y) E_p[f] grad log p(y) = 0``: the baseline removes variance, not expectation. It needs a
second label in the set (with k = 1 the baseline would be p(s) f(s), its own sample): k >= 2. The
weights and baselines are numbers (no gradient flows through R): grad f carries the reparameterised
z gradient and that of f's own ``-log q(y|x)`` term, the score terms the rest. The surrogate::

    sum_{s in S} w_s f(s) + stop_grad(w_s (f(s) - B(S, s))) log p(s),    w_s = p(s) R(S, s) detached

With k = K the set is every label: R = 1, B(S, s) is the exact ELBO, and the gradient is
enumeration's (nothing is drawn, so under one seed the value equals TraceEnum_ELBO's, as rb-topk's
does with k = K). The k labels are evaluated in one vectorised pass, in label order
(:class:`ssvae.rb.LabelStackELBO`).

The set probabilities come from one dynamic programme over the 2^k subsets A of the set's slots
(:func:`set_log_probs`): ``G(A) = p^{D\\A}(S \\ A) = sum_{j not in A} p(s_j) / (1 - p(A)) G(A + {j})``,
G(S) = 1, in log space with ``log(1 - p(A))`` the log-sum of p over the labels outside A (no
cancellation). Then p(S) = G({}), R(S, s_i) = G({i}) / G({}) and R^{D\\s_i}(S, s_j) = G({i, j}) / G({i}).
It costs k 2^k operations per image: nothing beside the decoder passes for k <= 10 labels.
"""
from __future__ import annotations

import torch

from .rb import LabelStackELBO


def gumbel_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) labels drawn without replacement from softmax(logits) (B, K), in label order."""
    tiny = torch.finfo(logits.dtype).tiny
    u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device).clamp(tiny, 1.0 - 1e-7)
    return (logits - (-u.log()).log()).topk(k, dim=-1).indices.sort(-1).values


def set_log_probs(log_p: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """log G(A) (2^k, B) for every subset A of the k slots of the sets ``idx`` (B, k) of labels, under the
    normalised log-probabilities ``log_p`` (B, K); subset A is the bit mask ``sum_{j in A} 2^j``."""
    (batch, num), k = log_p.shape, idx.shape[-1]
    masks = torch.arange(1 << k, device=log_p.device)
    slots = torch.arange(k, device=log_p.device)
    bits = (masks[:, None] >> slots) & 1  # (M, k): slot j in subset m
    labels = torch.nn.functional.one_hot(idx, num).to(log_p.dtype)  # (B, k, K)
    taken = torch.einsum("mj,bjl->mbl", bits.to(log_p.dtype), labels) > 0  # (M, B, K)
    log_rest = log_p.expand(len(masks), batch, num).masked_fill(taken, float("-inf")).logsumexp(-1)  # log(1 - p(A))
    log_ps = log_p.gather(-1, idx).T  # (k, B)
    children = masks[:, None] | (1 << slots)  # (M, k): A + {j}
    log_g = torch.zeros(len(masks), batch, dtype=log_p.dtype, device=log_p.device)  # G(S) = 1
    size = bits.sum(-1)
    for level in range(k - 1, -1, -1):  # larger subsets first: each level reads the one above
        m = masks[size == level]
        terms = (log_ps[None] + log_g[children[m]]).masked_fill(bits[m].bool()[..., None], float("-inf"))
        log_g[m] = terms.logsumexp(1) - log_rest[m]
    return log_g


def set_weights(log_p: torch.Tensor, idx: torch.Tensor):
    """(log w, log r) for the sets ``idx`` (B, k): ``w_i = p(s_i) R(S, s_i)`` (k, B) and
    ``r_ij = p(s_j) R^{D\\s_i}(S, s_j)`` (k, k, B), so that ``B(S, s_i) = sum_j r_ij f(s_j)``."""
    log_g = set_log_probs(log_p, idx)
    one = 1 << torch.arange(idx.shape[-1], device=log_p.device)
    log_ps = log_p.gather(-1, idx).T  # (k, B)
    log_g1 = log_g[one]  # G({i})
    log_w = log_ps + log_g1 - log_g[0]
    log_r = log_ps[None] + log_g[one[:, None] | one[None, :]] - log_g1[:, None]  # G({i, j}) / G({i})
    return log_w, log_r


class UnorderedSet(LabelStackELBO):
    """k labels of a one-hot guide site drawn without replacement, weighted and baselined as a set."""

    label = "unordered-set"

    def __init__(self, k: int = 4, site: str = "y", max_plate_nesting: int = 1):
        super().__init__(site=site, max_plate_nesting=max_plate_nesting)
        if int(k) != k or k < 2:
            raise ValueError(f"the unordered set estimator needs k >= 2 labels (got {k})")
        self.k = int(k)

    def _elbo_and_surrogate(self, model, guide, args, kwargs):
        fn, trace = self._site_dist(guide, args, kwargs)
        if fn is None:  # labeled batch: y observed, nothing to estimate
            elbo = self._plain_elbo(model, trace, args, kwargs)
            return elbo, elbo
        with torch.no_grad():
            logits = fn.logits.detach()  # (B, K), normalised
            num = logits.shape[-1]
            k = min(self.k, num)
            if k == num:  # every label: nothing to draw
                idx = torch.arange(num, device=logits.device).repeat(logits.shape[0], 1)
            else:
                idx = gumbel_top_k(logits, k)
            log_w, log_r = set_weights(logits.double(), idx)
            values = torch.nn.functional.one_hot(idx.T, num).to(logits.dtype)  # (k, B, K)
        f, q = self._per_label_elbo(model, guide, values, args, kwargs)  # (k, B)
        log_q = q.logits.gather(-1, idx).T  # (k, B): log p(s | x), differentiable
        w, r = log_w.exp().to(f.dtype), log_r.exp().to(f.dtype)
        fd = f.detach()
        baseline = (r * fd[None]).sum(1)  # (k, B): B(S, s_i)
        elbo = (w * f).sum()
        score = (w * (fd - baseline) * log_q).sum()
        return elbo, elbo + score - score.detach()
