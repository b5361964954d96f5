"""Every catalogue flow's ``log_prob`` exports with ``torch.export``, the exported program computes the eager values,
and eager calls after the export still return plain tensors equal to those before it (a cache filled during the trace
used to hand its fake tensors to later calls, and to fail the next export). Inside a trace the value checks are
skipped and numerical inverses run a fixed number of bisection steps (``pyroflows.functional.root``)."""

from __future__ import annotations

import pytest
import torch
from catalogue import CATALOGUE, NAMES, build, to_support
from torch._subclasses.fake_tensor import FakeTensor


class _LogProb(torch.nn.Module):
    def __init__(self, flow: torch.nn.Module, with_context: bool) -> None:
        super().__init__()
        self.flow, self.with_context = flow, with_context

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.flow(context if self.with_context else None).log_prob(x)


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_exports_and_leaves_no_trace_behind(name):
    context_dim = 2 if CATALOGUE[name].takes_context else 0
    flow = build(name, 3, context_dim, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    x, c = to_support(name, torch.randn(4, 3, generator=gen)), torch.randn(4, 2, generator=gen)
    module = _LogProb(flow, context_dim > 0).eval()
    with torch.no_grad():
        before = module(x, c)
        program = torch.export.export(module, (x, c))
        after = module(x, c)
        exported = program.module()(x, c)
    assert not isinstance(after, FakeTensor) and type(after) is torch.Tensor
    torch.testing.assert_close(after, before)
    torch.testing.assert_close(exported, before, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["MAF", "NSF", "RealNVP", "Planar"])
def test_log_prob_compiles_without_graph_breaks(name):
    """``torch.compile(fullgraph=True)`` traces ``log_prob`` in one graph (the value check's ``bool()`` broke it); the
    ``eager`` backend checks the trace without the cost of code generation."""
    flow = build(name, 3, 0, dtype=torch.float32)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    compiled = torch.compile(lambda v: flow().log_prob(v), fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), flow().log_prob(x), atol=1e-5, rtol=1e-5)
