"""The VAE phase's convolution input gradients, computed as convolutions, are torch's gradients."""

import pytest
import torch

from onereward.policy.conv_grads import input_grads_as_convolutions


def _grads(model, x):
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    (model(x) ** 2).mean().backward()
    return [x.grad] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("batch", [16, 2])  # NNPACK from 16 images; below, torch's other path
def test_gradients_match_torch_for_every_kernel_and_padding(batch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.SiLU(),
        torch.nn.Conv2d(16, 32, 1), torch.nn.SiLU(),
        torch.nn.Conv2d(32, 8, 3, padding=0),  # valid convolution: the output is smaller
        torch.nn.Conv2d(8, 4, (3, 1), padding=(1, 0)),
    )
    x = torch.randn(batch, 3, 12, 12)
    reference = _grads(model, x)
    with input_grads_as_convolutions(model) as patched:
        assert patched == 4
        ours = _grads(model, x)
    for r, o in zip(reference, ours):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)


def test_only_stride_one_convolutions_change_and_are_restored_afterwards():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, stride=2))
    x = torch.randn(2, 3, 8, 8)
    with input_grads_as_convolutions(model) as patched:
        assert patched == 1
        assert "forward" in vars(model[0]) and "forward" not in vars(model[1])
    assert "forward" not in vars(model[0])
    y = model(x)
    assert y.grad_fn.name() == "ConvolutionBackward0"


def test_the_tiny_vae_is_covered():
    from onereward.policy.tiny import build_tiny_pipeline

    vae = build_tiny_pipeline().vae
    convs = [m for m in vae.modules() if isinstance(m, torch.nn.Conv2d)]
    with input_grads_as_convolutions(vae) as patched:
        strided = sum(m.stride != (1, 1) for m in convs)
        assert patched == len(convs) - strided > 0
