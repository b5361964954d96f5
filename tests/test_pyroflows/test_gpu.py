"""CUDA: every catalogue flow, moved to or built on a GPU, computes what it computes on the CPU.

* built on the CPU then ``.to("cuda")``, and built under ``torch.set_default_device("cuda")`` (restored afterwards):
  every parameter and buffer is on the GPU, and ``log_prob``, ``sample``, ``rsample_and_log_prob``, the forward map
  and the inverse of fresh data, fed CUDA tensors, return CUDA tensors equal to the CPU results (float64, 1e-8);
* a CUDA flow fed CPU tensors raises. pyroflows does not check or move devices itself (it never fixes a device): the
  error is torch's own ``RuntimeError`` about tensors on different devices ("Expected all tensors to be on the same
  device ..." or, for an index, "indices should be either on cpu or on the same device ...");
* a flow saved from the GPU loads on the CPU with ``map_location="cpu"`` (and back on the GPU) with equal outputs.

Marked ``gpu``; skipped, with the reason shown by ``pytest -rs``, where torch sees no CUDA device.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from catalogue import CATALOGUE, NAMES, build, context_dims, to_support, torch_backend

import pyroflows

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEVICE = torch.device("cuda")
TOL = {"atol": 1e-8, "rtol": 1e-8}
CASES = [pytest.param(n, c, id=f"{n}-ctx{c}") for n in NAMES for c in context_dims(n)]


def _inputs(name: str, context_dim: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Data-side points (in the entry's support), base-side points and a context (or None), on the CPU, float64."""
    g = torch.Generator().manual_seed(1)
    x = to_support(name, torch.randn(n, 3, generator=g, dtype=torch.float64) * 2)
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    ctx = torch.randn(n, context_dim, generator=g, dtype=torch.float64) if context_dim else None
    return x, z, ctx


def _to(t: torch.Tensor | None, device: torch.device | str) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def _assert_on(flow: torch.nn.Module, device: torch.device) -> None:
    for name, t in itertools.chain(flow.named_parameters(), flow.named_buffers()):
        assert t.device.type == device.type, f"{name} is on {t.device}, not {device}"


def _assert_gpu_matches_cpu(name: str, flow_gpu: pyroflows.Flow, flow_cpu: pyroflows.Flow, context_dim: int) -> None:
    x, z, ctx = _inputs(name, context_dim)
    xg, zg, cg = x.to(DEVICE), z.to(DEVICE), _to(ctx, DEVICE)
    batch = (16,) if context_dim else ()

    def same(gpu: torch.Tensor, cpu: torch.Tensor, what: str) -> None:
        assert gpu.device.type == DEVICE.type and gpu.dtype == torch.float64, f"{what}: {gpu.device}, {gpu.dtype}"
        torch.testing.assert_close(gpu.cpu(), cpu, **TOL, msg=lambda m: f"{what}: {m}")

    with torch.no_grad():
        same(flow_gpu(cg).log_prob(xg), flow_cpu(ctx).log_prob(x), "log_prob")
        tg, tc = flow_gpu.transform(cg), flow_cpu.transform(ctx)
        yg, ldg = tg.forward_and_log_det(zg)
        yc, ldc = tc.forward_and_log_det(z)
        same(yg, yc, "forward")
        same(ldg, ldc, "forward log-det")
        xig, ldig = tg.inverse_and_log_det(xg)  # fresh data: never produced by the forward pass
        xic, ldic = tc.inverse_and_log_det(x)
        same(xig, xic, "inverse")
        same(ldig, ldic, "inverse log-det")
        s = flow_gpu(cg).sample((4,))
        assert s.device.type == DEVICE.type and s.shape == (4, *batch, 3) and torch.isfinite(s).all()
    # sampling draws CUDA noise (a different stream from the CPU's), so compare scores of the same points instead
    xs, lps = flow_gpu(cg).rsample_and_log_prob((4,))
    assert xs.device.type == lps.device.type == DEVICE.type and xs.shape == (4, *batch, 3) and lps.shape == (4, *batch)
    with torch.no_grad():
        same(lps.detach(), flow_cpu(ctx).log_prob(xs.detach().cpu()), "rsample_and_log_prob")
    # gradients stay on the GPU
    (xs.square().sum() + lps.sum()).backward()
    for name, p in flow_gpu.named_parameters():
        assert p.grad is not None and p.grad.device.type == DEVICE.type and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("name,context_dim", CASES)
def test_built_on_cpu_then_moved_to_cuda(name, context_dim):
    flow_cpu = build(name, 3, context_dim)
    flow_gpu = build(name, 3, context_dim).to(DEVICE)  # build() is seeded: the same flow twice
    _assert_on(flow_gpu, DEVICE)
    _assert_gpu_matches_cpu(name, flow_gpu, flow_cpu, context_dim)


# LULinear, RandomPermutation and random coupling masks draw their permutation with a seeded CPU generator on the CPU
# and then move it to the default device (torch refuses a CPU generator for a CUDA tensor; pytorch PR #47022).
# tests/test_pyroflows/transforms/test_linear_elementwise.py::test_seeded_permutations_follow_the_default_device checks
# this without a GPU.
DEFAULT_DEVICE_CASES = CASES


@pytest.mark.parametrize("name,context_dim", DEFAULT_DEVICE_CASES)
def test_built_under_default_device_cuda(name, context_dim):
    flow_cpu = build(name, 3, context_dim)
    previous = torch.get_default_device()
    torch.set_default_device(DEVICE)
    try:
        # every tensor made at construction must follow the default device (seeded as build() seeds it)
        flow_gpu = torch_backend().build(CATALOGUE[name], 3, context_dim)
    finally:
        torch.set_default_device(previous)
    assert torch.get_default_device() == previous
    _assert_on(flow_gpu, DEVICE)
    # parameters drawn on the GPU differ from the CPU's; copy the CPU flow's state (persistent buffers included) so
    # that outputs can be compared. Non-persistent buffers (masks, orders) were made under the default device.
    flow_gpu = flow_gpu.double()
    flow_gpu.load_state_dict(flow_cpu.state_dict())
    _assert_on(flow_gpu, DEVICE)
    _assert_gpu_matches_cpu(name, flow_gpu, flow_cpu, context_dim)


@pytest.mark.parametrize("name,context_dim", CASES)
def test_cuda_flow_with_cpu_inputs_raises_torchs_device_error(name, context_dim):
    flow = build(name, 3, context_dim).to(DEVICE)
    x, z, ctx = _inputs(name, context_dim)
    device_error = r"(?i)device|cuda|cpu"
    with pytest.raises(RuntimeError, match=device_error):
        flow(_to(ctx, DEVICE)).log_prob(x)  # CPU data
    with pytest.raises(RuntimeError, match=device_error):
        flow.transform(_to(ctx, DEVICE))(z)  # CPU base points
    if context_dim:
        with pytest.raises(RuntimeError, match=device_error):
            flow(ctx).log_prob(x.to(DEVICE))  # CPU context


@pytest.mark.parametrize("name", NAMES)
def test_saved_on_cuda_loads_on_cpu(name, tmp_path):
    context_dim = max(context_dims(name))
    flow_gpu = build(name, 3, context_dim).to(DEVICE)
    path = tmp_path / "flow.pt"
    pyroflows.save(flow_gpu, path)
    loaded = pyroflows.load(path, map_location="cpu")
    assert type(loaded) is type(flow_gpu)
    _assert_on(loaded, torch.device("cpu"))
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    x, z, ctx = _inputs(name, context_dim)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ctx).log_prob(x), flow_gpu(_to(ctx, DEVICE)).log_prob(x.to(DEVICE)).cpu(),
                                   **TOL)
        torch.testing.assert_close(loaded.transform(ctx)(z), flow_gpu.transform(_to(ctx, DEVICE))(z.to(DEVICE)).cpu(),
                                   **TOL)
    back = pyroflows.load(path, map_location=DEVICE)
    _assert_on(back, DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(back(_to(ctx, DEVICE)).log_prob(x.to(DEVICE)).cpu(), loaded(ctx).log_prob(x), **TOL)
