"""Batch parts of the networks: domain-specific BatchNorm, gradient reversal, discriminator, batch embedding."""

import pytest
import torch
import torch.nn.functional as F

from genohoption.nn import AdversarialDiscriminator, BatchEncoder, DomainSpecificBatchNorm, grad_reverse
from genohoption.nn._batch import batch_parts


def _bn_like(n_features, momentum=0.1):
    """torch's BatchNorm1d without affine: what scGPT's DomainSpecificBatchNorm1d runs for each batch."""
    return torch.nn.BatchNorm1d(n_features, affine=False, momentum=momentum)


def test_batch_parts():
    assert batch_parts(None) == (False, False)
    assert batch_parts("token") == (True, False)
    assert batch_parts("dsbn") == (False, True)
    assert batch_parts("token+dsbn") == (True, True)
    with pytest.raises(ValueError, match="batch_representation"):
        batch_parts("tokens")


def test_dsbn_training_normalises_each_batch_like_its_own_batchnorm():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, generator=g) * torch.tensor([1.0, 2, 3, 4, 5]) + 3
    codes = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 1])
    dsbn = DomainSpecificBatchNorm(5, 3)
    refs = [_bn_like(5) for _ in range(3)]
    for step in range(3):  # several minibatches: running statistics follow BatchNorm1d's
        xs = x + step
        y = dsbn(xs, codes)
        for b, ref in enumerate(refs):
            rows = codes == b
            torch.testing.assert_close(y[rows], ref(xs[rows]), rtol=1e-5, atol=1e-5)
    for b, ref in enumerate(refs):
        torch.testing.assert_close(dsbn.running_mean[b], ref.running_mean)
        torch.testing.assert_close(dsbn.running_var[b], ref.running_var)
        assert int(dsbn.num_batches_tracked[b]) == 3
    dsbn.eval()
    for ref in refs:
        ref.eval()
    y = dsbn(x, codes)
    for b, ref in enumerate(refs):
        torch.testing.assert_close(y[codes == b], ref(x[codes == b]), rtol=1e-5, atol=1e-5)


def test_dsbn_tokens_use_the_mask_and_leave_other_tokens_alone():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 3, generator=g) + torch.arange(4.0)[:, None, None]
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[:, 0] = False  # CLS
    mask[1, 4:] = False  # padding
    codes = torch.tensor([0, 0, 1, 1])
    y = DomainSpecificBatchNorm(3, 2)(x, codes, mask)
    torch.testing.assert_close(y[~mask], x[~mask])
    for b in (0, 1):
        cells = (codes == b)[:, None].expand(4, 6) & mask
        ref = F.batch_norm(x[cells], None, None, training=True, eps=1e-5)
        torch.testing.assert_close(y[cells], ref, rtol=1e-5, atol=1e-5)


def test_dsbn_single_row_uses_running_statistics_and_gradients_flow():
    dsbn = DomainSpecificBatchNorm(2, 2, affine=True)
    dsbn.running_mean[1] = torch.tensor([1.0, -1.0])
    dsbn.running_var[1] = torch.tensor([4.0, 9.0])
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0], [5.0, 5.0]], requires_grad=True)
    y = dsbn(x, torch.tensor([0, 0, 1]))
    torch.testing.assert_close(y[2], (x[2] - torch.tensor([1.0, -1.0])) / torch.sqrt(torch.tensor([4.0, 9.0]) + 1e-5))
    assert int(dsbn.num_batches_tracked[1]) == 0  # not updated by a single row
    assert torch.equal(dsbn.running_mean[1], torch.tensor([1.0, -1.0]))
    y.sum().backward()
    assert x.grad is not None and dsbn.weight.grad is not None


def test_dsbn_refuses_new_batches_in_training():
    with pytest.raises(ValueError, match="n_batches"):
        DomainSpecificBatchNorm(2, 2)(torch.randn(4, 2), torch.tensor([0, 1, 2, 2]))


def test_dsbn_unknown_batch_gets_pooled_statistics():
    dsbn = DomainSpecificBatchNorm(2, 2).eval()
    dsbn.running_mean.copy_(torch.tensor([[0.0, 2.0], [2.0, 2.0]]))
    dsbn.running_var.copy_(torch.tensor([[1.0, 1.0], [1.0, 3.0]]))
    # mixture of two equal-weight components: mean 1, var = E[var] + Var[mean] = 1 + 1 (first), 2 + 0 (second)
    mean, var = dsbn.pooled_statistics()
    torch.testing.assert_close(mean, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(var, torch.tensor([2.0, 2.0]))
    x = torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(dsbn(x, torch.tensor([2])), (x - mean) / torch.sqrt(var + 1e-5))
    # a new batch (code 3) before adaptation: pooled too
    torch.testing.assert_close(dsbn(x, torch.tensor([3])), (x - mean) / torch.sqrt(var + 1e-5))


def test_dsbn_adaptation_uses_the_new_batch_statistics_over_every_chunk():
    g = torch.Generator().manual_seed(2)
    dsbn = DomainSpecificBatchNorm(3, 2).eval()
    new = torch.randn(10, 3, generator=g) * 3 + 7
    known = torch.randn(4, 3, generator=g)
    dsbn.begin_adaptation()
    for chunk in (slice(0, 6), slice(6, 10)):  # the query arrives in minibatches
        dsbn(torch.cat([new[chunk], known]), torch.tensor([3] * (chunk.stop - chunk.start) + [0] * 4))
    dsbn.end_adaptation()
    y = dsbn(new, torch.full((10,), 3))
    torch.testing.assert_close(y, F.batch_norm(new, None, None, training=True, eps=1e-5), rtol=1e-4, atol=1e-4)
    dsbn.clear_adaptation()
    mean, var = dsbn.pooled_statistics()
    torch.testing.assert_close(dsbn(new, torch.full((10,), 3)), (new - mean) / torch.sqrt(var + 1e-5))


def test_grad_reverse_flips_and_scales_the_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(3, 4)
    y = grad_reverse(x, 0.5)
    torch.testing.assert_close(y, x)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.5 * w)


def test_discriminator_gradient_is_reversed_into_the_embedding():
    torch.manual_seed(0)
    disc = AdversarialDiscriminator(6, 3)
    z = torch.randn(5, 6, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1])
    F.cross_entropy(disc(z), labels).backward()
    reversed_grad = z.grad.clone()
    z.grad = None
    disc.lambd = 0.0  # same network; compute the ordinary gradient by hand
    h = z
    for block in disc._decoder:
        h = block(h)
    F.cross_entropy(disc.out_layer(h), labels).backward()
    torch.testing.assert_close(reversed_grad, -z.grad)
    assert len(disc._decoder) == 6  # scGPT: (Linear, LeakyReLU, LayerNorm) x 2, then out_layer


def test_batch_encoder_unknown_batch_reads_the_zero_padding_row():
    enc = BatchEncoder(2, 4)
    out = enc(torch.tensor([0, 1, 2, 5]))
    torch.testing.assert_close(out[2], enc.enc_norm.bias.detach().expand(4).clone())  # LayerNorm of zeros
    torch.testing.assert_close(out[2], out[3])
    out.sum().backward()
    assert torch.count_nonzero(enc.embedding.weight.grad[2]) == 0
