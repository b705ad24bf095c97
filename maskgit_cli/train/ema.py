"""An exponential moving average of a model's weights (Polyak averaging).

    avg = WeightAverage(model, decay=0.999, copied=("codebook.",))
    ... optimizer step ...
    avg.update(model, step)        # avg <- avg + (1 - d) (model - avg)
    avg.model                      # what validation, the checkpoint's users and exports see

The average starts as a copy of the model. Its decay ramps up as min(decay, (1 + step) /
(10 + step)), so the random start has faded after a few hundred steps whatever the decay: with a
constant 0.999, 5 % of the initial weights would still be in the average after 3,000 steps.
Parameters whose names start with a prefix in `copied` are not averaged but copied: the tokenizer's
codebook, whose rows the training loop moves outright (data-dependent init, dead-code restarts);
an average of a dead code and its replacement is neither. Buffers are copied.
"""

from __future__ import annotations

import copy

import torch


def decay_at(decay: float, step: int) -> float:
    return min(decay, (1 + step) / (10 + step))


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float, copied: tuple[str, ...] = ()):
        self.decay, self.copied = decay, copied
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = decay_at(self.decay, step)
        live = dict(model.named_parameters())
        for name, p in self.model.named_parameters():
            if name.startswith(self.copied):
                p.copy_(live[name])
            else:
                p.lerp_(live[name], 1 - d)
        live_buffers = dict(model.named_buffers())
        for name, b in self.model.named_buffers():
            b.copy_(live_buffers[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


def maybe(model: torch.nn.Module, decay: float, copied: tuple[str, ...] = ()):
    """A WeightAverage when `decay` > 0 (the config's `ema`), else None."""
    return WeightAverage(model, decay, copied) if decay > 0 else None
