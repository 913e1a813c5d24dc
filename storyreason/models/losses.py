"""Caption loss: the vocabulary projection and the cross-entropy fused, chunk by chunk; the hard-token mean.

A (N, V) logits tensor over a vocabulary of thousands is the largest tensor of a stage-2 step, and the
log-softmax, its backward and the zeroed gradient each pass over it in memory. Computed here a chunk of
rows at a time, the logits of a chunk are turned into their gradient while still in the CPU's caches,
and nothing of size (N, V) is kept for the backward pass.
"""

from __future__ import annotations

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy (float32) of `hidden @ weight.T + bias` against `target`; the gradients are computed
    in the forward pass (chunk by chunk) when any input needs one, and only scaled in the backward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, target: torch.Tensor,
                chunk: int) -> torch.Tensor:
        device = hidden.device.type
        # under autocast (Lightning's bf16-mixed) the three products run in its dtype, as a Linear's would;
        # the softmax and every accumulation stay float32
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        with torch.autocast(device, enabled=False):
            hidden_c, weight_c = hidden.to(dtype), weight.to(dtype)
            n = len(hidden)
            wants_grad = any(ctx.needs_input_grad[:3])
            grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if wants_grad else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if wants_grad else None
            grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if wants_grad else None
            total = hidden.new_zeros((), dtype=torch.float64)
            for start in range(0, n, chunk):
                h, t = hidden_c[start : start + chunk], target[start : start + chunk]
                logits = torch.mm(h, weight_c.t()).float().add_(bias)  # (c, V)
                log_sum_exp = logits.logsumexp(dim=1, keepdim=True)  # (c, 1)
                total += (log_sum_exp[:, 0] - logits.gather(1, t[:, None])[:, 0]).sum(dtype=torch.float64)
                if wants_grad:  # d(summed loss)/d(logits) = softmax - one-hot, in place of the logits
                    probs = logits.sub_(log_sum_exp).exp_()
                    probs[torch.arange(len(t), device=t.device), t] -= 1.0
                    grad_bias += probs.sum(dim=0)
                    probs = probs.to(dtype)
                    grad_hidden[start : start + chunk] = torch.mm(probs, weight_c)
                    grad_weight += torch.mm(probs.t(), h)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.n, ctx.dtypes = n, (hidden.dtype, weight.dtype, bias.dtype)
        return (total / max(n, 1)).float()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_loss / max(ctx.n, 1)
        grads = [None if g is None else (g * scale).to(dtype)
                 for g, dtype in zip((grad_hidden, grad_weight, grad_bias), ctx.dtypes)]
        return grads[0], grads[1], grads[2], None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, target: torch.Tensor,
                         chunk: int = 512) -> torch.Tensor:
    """hidden (N, F), the projection's weight (V, F) and bias (V,), target (N,) ids -> the mean cross-entropy,
    as `F.cross_entropy(F.linear(hidden, weight, bias), target)` (every target counts: select the tokens
    first), `chunk` rows at a time."""
    return _LinearCrossEntropy.apply(hidden, weight, bias, target, chunk)


def hard_token_mean(nll: torch.Tensor, gamma: float = 0.0) -> torch.Tensor:
    """The mean of per-token losses nll (N,), each weighted by (1 - p) ** gamma where p = exp(-nll) is the
    model's probability of the token (focal loss's factor, held constant in the backward pass and the
    weights normalised to sum to 1); gamma = 0 is the plain mean.

    A next caption copies most of the last one: once the copy is learnt those tokens carry little loss but
    most of the count, and the few words that change (a step, a bounce, a region) decide the score. The
    weights move the updates onto them, while the loss keeps the scale of a mean cross-entropy."""
    if not gamma:
        return nll.mean()
    weights = (1 - torch.exp(-nll.detach())).pow(gamma)
    return (weights * nll).sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)
