"""Batch parts of the task modules: how the batch token and the domain-specific normalisations act."""

import pytest
import torch
import torch.nn.functional as F

from genohoption.module import AnnotationModule, PretrainingModule
from genohoption.module._inputs import backbone_tokens

N_GENES = 12
SMALL = {"d_model": 8, "n_heads": 2, "n_layers": 1, "d_hid": 16, "dropout": 0.0, "attention": "dense"}


def _graph():
    return torch.zeros(N_GENES + 1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)


def _cells(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, N_GENES, generator=g) * 3
    x[torch.rand(n, N_GENES, generator=g) < 0.3] = 0.0
    return x


def test_batch_token_enters_the_cell_decoder_as_a_known_inner_product():
    torch.manual_seed(0)
    module = PretrainingModule(N_GENES, *_graph(), n_batches=2, batch_representation="token", **SMALL).eval()
    x = _cells()
    b0, b1 = torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.long)
    out0, out1 = module(x, mask=False, batch_index=b0), module(x, mask=False, batch_index=b1)
    torch.testing.assert_close(out0["z"], out1["z"])  # the encoder does not see the batch token
    # pred_cell = <W q_g, [z, e_b]>: changing the batch adds <W_batch q_g, e_1 - e_0> for every gene token
    bb = module.backbone
    tokens = backbone_tokens(bb, x, None, sample=False)
    q = module.mvc_decoder.query_activation(module.mvc_decoder.gene2query(
        bb.encoder(bb.token_ids(tokens.genes, tokens.padding_mask))))
    wq = module.mvc_decoder.W(q)[..., bb.d_model:]
    e = module.batch.encoder(torch.tensor([0, 1]))
    expected = (wq * (e[1] - e[0])).sum(-1)
    torch.testing.assert_close(out1["pred_cell"] - out0["pred_cell"], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out1["pred"], out0["pred"])  # the token decoder reads it too


def test_annotation_classifier_does_not_read_the_batch_token():
    torch.manual_seed(0)
    module = AnnotationModule(N_GENES, 3, *_graph(), n_batches=2, batch_representation="token",
                              cls_input_norm=None, **SMALL).eval()
    x = _cells()
    a = module(x, batch_index=torch.zeros(6, dtype=torch.long))
    b = module(x, batch_index=torch.ones(6, dtype=torch.long))
    torch.testing.assert_close(a["logits"], b["logits"])
    with pytest.raises(ValueError, match="batch_index"):
        module(x)


def test_dsbn_standardises_each_batch_at_the_input_and_before_the_classifier():
    torch.manual_seed(0)
    module = AnnotationModule(N_GENES, 3, *_graph(), n_batches=2, batch_representation="dsbn",
                              cell_emb="cls+expr", **SMALL).train()
    assert module.batch.encoder is None and module.batch_head_norm is not None
    captured = {}

    def keep(m, args):
        captured["x"] = args[0].detach()

    def keep_z(m, args):
        captured["z"] = args[0].detach()

    handles = [module.backbone.transformer_encoder.layers[0].register_forward_pre_hook(keep),
               module.batch_head_norm.register_forward_pre_hook(keep_z)]
    x = torch.cat([_cells(5, 0), _cells(5, 1) * 4 + 1])
    codes = torch.tensor([0] * 5 + [1] * 5)
    out = module(x, batch_index=codes)
    for handle in handles:
        handle.remove()
    h = captured["x"]
    tokens = backbone_tokens(module.backbone, x, None, sample=False)
    genes = ~tokens.padding_mask & (tokens.genes >= 0)
    for b in (0, 1):
        g = h[(codes == b)[:, None] & genes]  # every gene token of the batch's cells
        torch.testing.assert_close(g.mean(0), torch.zeros(g.shape[1]), atol=1e-4, rtol=0)
        torch.testing.assert_close(g.var(0, unbiased=False), torch.ones(g.shape[1]), atol=1e-3, rtol=0)
        # the classifier's input (weight 1, bias 0 at initialisation): BatchNorm of the batch's embeddings alone
        raw = captured["z"][codes == b]
        torch.testing.assert_close(out["z"][codes == b], F.batch_norm(raw, None, None, training=True, eps=1e-5),
                                   rtol=1e-4, atol=1e-5)
    # the CLS token's input is left alone: the same for every cell, whatever its batch
    torch.testing.assert_close(h[:, 0], h[:1, 0].expand(10, -1))


def test_adversarial_discriminator_reads_the_cell_embedding():
    torch.manual_seed(0)
    module = AnnotationModule(N_GENES, 3, *_graph(), n_batches=3, batch_adversarial=0.5, **SMALL).train()
    out = module(_cells(), batch_index=torch.tensor([0, 1, 2, 0, 1, 2]))
    assert out["batch_logits"].shape == (6, 3)
    with pytest.raises(ValueError, match="two batches"):
        AnnotationModule(N_GENES, 3, *_graph(), n_batches=1, batch_adversarial=0.5, **SMALL)
