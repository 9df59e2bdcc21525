"""Multi-layer perceptrons as in Pyro's ``examples/vae/utils/custom_mlp.py``.

Hidden layers are ``Linear`` + softplus with weights and biases initialised N(0, 0.001)
(Pyro's choice "for numerical stability"); output layers keep torch's default
initialisation. Inputs given as a list are concatenated on the last dimension after
broadcasting the leading (batch, enumeration, particle) dimensions, so the same network
serves sampled and enumerated labels.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

Tensors = Union[torch.Tensor, Sequence[torch.Tensor]]


def broadcast_cat(tensors: Tensors) -> torch.Tensor:
    """Concatenate on the last dim, broadcasting all other dims."""
    if torch.is_tensor(tensors):
        return tensors
    if len(tensors) == 1:
        return tensors[0]
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(shape + t.shape[-1:]) for t in tensors], dim=-1)


def hidden_stack(in_size: int, hidden: Sequence[int]) -> nn.Sequential:
    """Linear + Softplus layers with Pyro's N(0, 0.001) initialisation."""
    layers = []
    for size in hidden:
        linear = nn.Linear(in_size, size)
        with torch.no_grad():
            linear.weight.normal_(0.0, 0.001)
            linear.bias.normal_(0.0, 0.001)
        layers += [linear, nn.Softplus()]
        in_size = size
    return nn.Sequential(*layers)


class MLP(nn.Module):
    """``in_size -> hidden... -> out_size``; output is the last layer's pre-activation."""

    def __init__(self, in_size: int, hidden: Sequence[int], out_size: int):
        super().__init__()
        self.hidden = hidden_stack(in_size, hidden)
        self.out = nn.Linear(hidden[-1] if hidden else in_size, out_size)

    def forward(self, inputs: Tensors) -> torch.Tensor:
        return self.out(self.hidden(broadcast_cat(inputs)))


class GaussianMLP(nn.Module):
    """An MLP with two heads: ``loc`` (linear) and ``scale`` (exp), as Pyro's encoder_z."""

    def __init__(self, in_size: int, hidden: Sequence[int], out_size: int):
        super().__init__()
        self.hidden = hidden_stack(in_size, hidden)
        last = hidden[-1] if hidden else in_size
        self.loc = nn.Linear(last, out_size)
        self.log_scale = nn.Linear(last, out_size)

    def forward(self, inputs: Tensors):
        h = self.hidden(broadcast_cat(inputs))
        return self.loc(h), torch.exp(self.log_scale(h))
