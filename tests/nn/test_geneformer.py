"""GeneformerBackbone against Hugging Face ``transformers``' BertForMaskedLM (``bert`` fixture), layer by layer."""

import pytest
import torch

from genohoption.data import rank_value_encode
from genohoption.nn import GeneformerBackbone, induced_batch_graph


def _backbone_from(bert_model, n_genes, *, attention, special=False):
    cfg = bert_model.config
    g2t = torch.arange(n_genes) + 4  # genes take ids 4 … ; 0 pad, 1 mask, 2 cls, 3 eos
    bb = GeneformerBackbone(
        g2t, torch.ones(n_genes), vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads, num_hidden_layers=cfg.num_hidden_layers,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_position_embeddings,
        hidden_act=cfg.hidden_act, dropout=0.0, cls_token_id=2 if special else None,
        eos_token_id=3 if special else None, attention=attention,
    )
    from genohoption.model._pretrained import _bert_keys

    mapped, _, _ = _bert_keys(bert_model.state_dict())
    missing, unexpected = bb.load_state_dict({k.removeprefix("backbone."): v for k, v in mapped.items()}, strict=False)
    assert set(missing) == {"gene_to_token", "gene_medians"} and not unexpected
    return bb.eval()


@pytest.mark.parametrize(("special", "act"), [(False, "relu"), (True, "gelu")])
def test_dense_matches_transformers_bert_layer_by_layer(special, act, bert):
    n_genes = 30
    ref = bert.masked_lm(40, 16, 2, 3, 24, 32, act=act)
    bb = _backbone_from(ref, n_genes, attention="dense", special=special)
    x = torch.poisson(torch.full((4, n_genes), 0.8), generator=torch.Generator().manual_seed(0))
    x[1, :] = 0
    x[1, 3] = 2.0  # one-gene cell
    tok = rank_value_encode(x, torch.ones(n_genes), 12, cls_token=special, eos_token=special)
    with torch.no_grad():
        hidden = bb(tok.genes, tok.values, tok.padding_mask, None, all_layers=True)
        ids = bb.token_ids(tok.genes, tok.padding_mask)
        out = ref(input_ids=ids, attention_mask=(~tok.padding_mask).long(), output_hidden_states=True)
    real = ~tok.padding_mask
    assert len(hidden) == len(out.hidden_states) == 4
    for ours, theirs in zip(hidden, out.hidden_states, strict=True):
        torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-4)
    if special:
        assert (ids[:, 0] == 2).all() and ((ids == 3).sum(1) == 1).all()
    z = bb.cell_embedding(hidden[-1], tok.genes, tok.padding_mask)
    is_gene = real & (tok.genes >= 0) & (tok.genes < n_genes)
    ref_z = torch.stack([out.hidden_states[-1][i][is_gene[i]].mean(0) for i in range(4)])
    torch.testing.assert_close(z, ref_z, atol=1e-5, rtol=1e-4)
    if special:
        torch.testing.assert_close(bb.cell_embedding(hidden[2], tok.genes, tok.padding_mask, "cls"),
                                   out.hidden_states[2][:, 0], atol=1e-5, rtol=1e-4)
    else:
        with pytest.raises(ValueError, match="needs a <cls> token"):
            bb.cell_embedding(hidden[-1], tok.genes, tok.padding_mask, "cls")


@pytest.mark.parametrize("attention", ["ppr", "heat", "mask"])
def test_sparse_attention_reuses_weights_and_runs(attention, bert):
    n_genes = 20
    ref = bert.masked_lm(40, 16, 2, 1, 24, 32, seed=1)
    sd = ref.state_dict()
    bb = _backbone_from(ref, n_genes, attention=attention)
    dense = _backbone_from(ref, n_genes, attention="dense")
    wqkv = bb.encoder.layer[0].attention.self.Wqkv.weight
    torch.testing.assert_close(wqkv[:16], sd["bert.encoder.layer.0.attention.self.query.weight"])
    torch.testing.assert_close(wqkv[32:], sd["bert.encoder.layer.0.attention.self.value.weight"])
    x = torch.poisson(torch.full((3, n_genes), 1.0))
    tok = rank_value_encode(x, torch.ones(n_genes), 10)
    rows = torch.arange(n_genes)
    indptr = torch.arange(0, 2 * n_genes + 1, 2)
    indices = torch.stack([(rows + 1) % n_genes, (rows + 2) % n_genes], 1).reshape(-1)
    graph = induced_batch_graph(tok.genes, indptr, indices, cls_token=False)
    with torch.no_grad():
        h = bb(tok.genes, tok.values, tok.padding_mask, graph)
        hd = dense(tok.genes, tok.values, tok.padding_mask, None)
    assert torch.isfinite(h).all()
    assert not torch.allclose(h[~tok.padding_mask], hd[~tok.padding_mask], atol=1e-3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="hidden_act"):
        GeneformerBackbone(torch.arange(3), torch.ones(3), vocab_size=5, hidden_act="tanh")
    with pytest.raises(ValueError, match="both"):
        GeneformerBackbone(torch.arange(3), torch.ones(3), vocab_size=5, cls_token_id=2)
    bb = GeneformerBackbone(torch.arange(3), torch.ones(3), vocab_size=5, hidden_size=8, num_attention_heads=2,
                            num_hidden_layers=1, intermediate_size=8, max_position_embeddings=4, attention="dense")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        bb(torch.zeros(1, 5, dtype=torch.long), None, torch.zeros(1, 5, dtype=torch.bool), None)
