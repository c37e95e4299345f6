"""A perturbation model on a pretrained scGPT checkpoint (small random weights in the official layout)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import genohoption as gh
from genohoption.nn import ExprDecoder, ScGPTBackbone

D, HEADS, D_HID, LAYERS = 16, 2, 24, 2


@pytest.fixture(scope="module")
def data():
    sim = gh.datasets.simulate_perturbation(n_genes=30, n_regulators=10, n_perturbed=6, n_combos=3, n_control=50,
                                           cells_per_condition=8, library_size=1500, seed=2)
    hidden = sim.uns["simulation"]["perturbed_genes"][0]
    adata = sim[:, sim.var_names != hidden].copy()
    gh.pp.build_gene_graph(adata)
    return adata, hidden


def write_checkpoint(path, symbols, extra):
    """best_model.pt (scGPT key names, flash-attention Wqkv), args.json, vocab.json; two genes left out."""
    torch.manual_seed(0)
    vocab = {"<pad>": 0, "<cls>": 1, "<eoc>": 2}
    vocab.update({g: 3 + i for i, g in enumerate([*symbols[2:], extra])})
    g2t = torch.as_tensor([vocab.get(g, -1) for g in symbols])
    backbone = ScGPTBackbone(len(symbols), d_model=D, n_heads=HEADS, n_layers=LAYERS, d_hid=D_HID, dropout=0.0,
                             gene_to_token=g2t, n_tokens=len(vocab) + 1, cls_id=1, pad_id=0)
    state = {k: v for k, v in backbone.state_dict().items() if k != "gene_to_token"}
    state.update({f"decoder.{k}": v for k, v in ExprDecoder(D).state_dict().items()})
    with torch.no_grad():
        for v in state.values():
            v.add_(torch.randn_like(v) * 0.1)
    path.mkdir(parents=True)
    torch.save(state, path / "best_model.pt")
    (path / "args.json").write_text(json.dumps({"embsize": D, "nheads": HEADS, "d_hid": D_HID, "nlayers": LAYERS,
                                                "pad_token": "<pad>", "pad_value": -2, "n_bins": 51,
                                                "input_style": "binned", "input_emb_style": "continuous"}))
    (path / "vocab.json").write_text(json.dumps(vocab))
    return state, vocab


def test_pretrained_scgpt_perturbation_model(data, tmp_path):
    adata, hidden = data
    symbols = adata.var["gene_name"].astype(str).tolist()
    state, vocab = write_checkpoint(tmp_path / "ckpt", symbols, hidden)
    a = adata.copy()
    gh.GenoHoptionModel.setup_anndata(a, perturbation_key="condition", gene_symbols="gene_name")
    model = gh.GenoHoptionModel(a, pretrained=tmp_path / "ckpt", gene_symbols="gene_name", dropout=0.0)
    report = model.pretrained_report_
    assert report.n_genes_matched == len(symbols) - 2
    assert "decoder.fc.0.weight" in report.matched and "transformer_encoder.layers.1.linear2.weight" in report.matched
    assert model.params["d_model"] == 64 and model.module.backbone.d_model == D  # sizes from the checkpoint
    module = model.module
    np.testing.assert_array_equal(module.backbone.encoder.embedding.weight.detach(), state["encoder.embedding.weight"])
    np.testing.assert_array_equal(module.decoder.fc[4].weight.detach(), state["decoder.fc.4.weight"])
    # the unmeasured perturbed gene is in the vocabulary: its token takes the pretrained embedding
    k = model._task.universe.find(hidden) - a.n_vars
    assert int(module.extra_to_token[k]) == vocab[hidden]
    model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    ctrl = a[a.obs["condition"] == "ctrl"][:5].copy()
    out = model.predict_perturbation(ctrl, f"{hidden}+ctrl")
    assert out.shape == (5, a.n_vars) and np.isfinite(out).all()
    model.save(tmp_path / "m")
    loaded = gh.GenoHoptionModel.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.predict_perturbation(ctrl, f"{hidden}+ctrl"), out, atol=1e-5)
    assert int(loaded.module.extra_to_token[k]) == vocab[hidden]


def test_pretrained_refuses_geneformer_for_perturbation(data):
    adata, _ = data
    a = adata.copy()
    gh.GenoHoptionModel.setup_anndata(a, perturbation_key="condition", gene_symbols="gene_name")
    with pytest.raises(ValueError, match="backbone='scgpt'"):
        gh.GenoHoptionModel(a, backbone="geneformer")
