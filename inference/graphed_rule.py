"""A rule's keep-or-defer decision replayed from CUDA graphs (the `graphs` engine).

Once the models' forwards are graphed, a rule's own kernels (softmaxes over the vocabulary, the
router's features and network: a few hundred small launches) become a large share of a step. Its
decision over a block has one shape per (rows, drafts), so it is captured once per shape like the
forwards. A rule whose decision cannot be captured (it reads a value on the host) runs eagerly, after
one warning.
"""

from __future__ import annotations

import dataclasses
import sys
import weakref

import torch

from deferral.features import Lookahead
from deferral.rules import DeferralRule, StepDistributions

TENSOR_FIELDS = ("q_logits", "p_logits", "drafted", "drafter_hidden", "target_hidden")


def _inputs(d: StepDistributions) -> dict[str, torch.Tensor]:
    """The tensors a decision reads, by name (absent optional ones left out)."""
    found = {name: getattr(d, name) for name in TENSOR_FIELDS if getattr(d, name) is not None}
    if d.lookahead is not None:
        found.update({f"lookahead.{f.name}": getattr(d.lookahead, f.name) for f in dataclasses.fields(Lookahead)})
    return found


def _rebuild(d: StepDistributions, tensors: dict[str, torch.Tensor]) -> StepDistributions:
    """A StepDistributions with d's settings over the given tensors."""
    plain = {k: v for k, v in tensors.items() if "." not in k}
    ahead = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("lookahead.")}
    return StepDistributions(**plain, temperature=d.temperature, top_p=d.top_p,
                             lookahead=Lookahead(**ahead) if ahead else None)


class GraphedDecision:
    """rule.defers(d) (N,) bool, from a CUDA graph captured per input shape."""

    def __init__(self, rule: DeferralRule):
        self.rule = rule
        self._graphs: dict[tuple, tuple] = {}
        self._eager = False

    def __call__(self, d: StepDistributions) -> torch.Tensor:
        if self._eager:
            return self.rule.defers(d)
        tensors = _inputs(d)
        key = tuple((name, tuple(t.shape), t.dtype) for name, t in tensors.items())
        if key not in self._graphs:
            try:
                self._graphs[key] = self._capture(d, tensors)
            except RuntimeError as exc:  # a host sync inside the rule: it cannot be captured
                print(f"warning: the rule's decision runs without CUDA graphs ({str(exc).splitlines()[0][:120]})",
                      file=sys.stderr)
                self._eager = True
                return self.rule.defers(d)
        graph, static, out = self._graphs[key]
        for name, t in tensors.items():
            static[name].copy_(t)
        graph.replay()
        return out.clone()

    def _capture(self, d: StepDistributions, tensors: dict[str, torch.Tensor]):
        static = {name: t.clone() for name, t in tensors.items()}
        device = next(iter(static.values())).device
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: lazily built state (caches, kernels) outside the graph
            self.rule.defers(_rebuild(d, static))
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.rule.defers(_rebuild(d, static))  # a fresh StepDistributions: its cached views are captured
        return graph, static, out


_decisions: "weakref.WeakKeyDictionary[DeferralRule, GraphedDecision]" = weakref.WeakKeyDictionary()


def graphed_decision(rule: DeferralRule) -> GraphedDecision:
    """The rule's graphed decision, kept with the rule so the next decode loop replays its graphs."""
    if rule not in _decisions:
        _decisions[rule] = GraphedDecision(rule)
    return _decisions[rule]
