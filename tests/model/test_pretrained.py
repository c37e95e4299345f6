"""Pretrained scGPT / Geneformer checkpoints: official layouts, dense equivalence, safety, bad input."""

import json
import pickle
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import save_file
from torch import nn

import genohoption as gh
from genohoption._safe_pickle import UnsafePickleError
from genohoption.model import CheckpointError, PretrainedCheckpoint, map_genes, read_pretrained

N_GENES, N_CELLS = 24, 48
D, HEADS, D_HID, LAYERS = 16, 2, 24, 2
TRAIN = {"max_epochs": 1, "batch_size": 16, "enable_progress_bar": False, "log_every_n_steps": 1}


# ----------------------------------------------------------------------------- data
@pytest.fixture
def adata():
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.uniform(0.2, 2.0, N_GENES), (N_CELLS, N_GENES)).astype(np.float32)
    a = ad.AnnData(counts)
    a.var_names = [f"GENE{i}" for i in range(N_GENES)]
    a.var["ensembl"] = [f"ENSG{i:011d}" for i in range(N_GENES)]
    a.obs_names = [f"c{i}" for i in range(N_CELLS)]
    a.obs["cell_type"] = pd.Categorical(rng.choice(["A", "B", "C"], N_CELLS))
    rows = np.repeat(np.arange(N_GENES), 2)
    cols = np.stack([(np.arange(N_GENES) + 1) % N_GENES, (np.arange(N_GENES) + 5) % N_GENES], 1).ravel()
    a.varp["gene_graph"] = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(N_GENES, N_GENES))
    return a


# ----------------------------------------------------------------------------- scGPT reference
class _GeneEncoder(nn.Module):
    def __init__(self, n, d):
        super().__init__()
        self.embedding, self.enc_norm = nn.Embedding(n, d), nn.LayerNorm(d)


class _ContinuousValueEncoder(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.linear1, self.linear2, self.norm = nn.Linear(1, d), nn.Linear(d, d), nn.LayerNorm(d)

    def forward(self, v):
        return self.norm(self.linear2(torch.relu(self.linear1(v.clamp(max=512).unsqueeze(-1)))))


class _CategoryValueEncoder(nn.Module):
    def __init__(self, n, d):
        super().__init__()
        self.embedding, self.enc_norm = nn.Embedding(n, d), nn.LayerNorm(d)

    def forward(self, v):
        return self.enc_norm(self.embedding(v.long()))


class _ExprDecoder(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(d, d), nn.LeakyReLU(), nn.Linear(d, d), nn.LeakyReLU(), nn.Linear(d, 1))


class _ClsDecoder(nn.Module):
    def __init__(self, d, n_cls):
        super().__init__()
        self._decoder = nn.ModuleList([nn.Linear(d, d), nn.ReLU(), nn.LayerNorm(d)] * 1 + [nn.Linear(d, d), nn.ReLU(),
                                                                                          nn.LayerNorm(d)])
        self.out_layer = nn.Linear(d, n_cls)

    def forward(self, x):
        for m in self._decoder:
            x = m(x)
        return self.out_layer(x)


class RefScGPT(nn.Module):
    """scGPT ``TransformerModel`` (post-LN, torch TransformerEncoder), same parameter names, plain torch."""

    def __init__(self, n_tokens, n_cls=3, category_bins=None):
        super().__init__()
        self.encoder = _GeneEncoder(n_tokens, D)
        self.value_encoder = _CategoryValueEncoder(category_bins, D) if category_bins else _ContinuousValueEncoder(D)
        layer = nn.TransformerEncoderLayer(D, HEADS, D_HID, dropout=0.0, batch_first=True)
        self.transformer_encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.decoder = _ExprDecoder(D)
        self.cls_decoder = _ClsDecoder(D, n_cls)
        with torch.no_grad():
            for p in self.parameters():  # non-trivial LayerNorm affine parameters too
                p.add_(torch.randn_like(p) * 0.1)

    def forward(self, src, values, pad):
        x = self.encoder.enc_norm(self.encoder.embedding(src)) + self.value_encoder(values)
        h = self.transformer_encoder(x, src_key_padding_mask=pad)
        return h, self.cls_decoder(h[:, 0]), self.decoder.fc(h).squeeze(-1)


def _vocab(adata, drop=(3, 7)):
    genes = [g for i, g in enumerate(adata.var_names) if i not in drop]  # two genes outside the vocabulary
    vocab = {"<pad>": 0, "<cls>": 1, "<eoc>": 2, "OTHER1": 3}
    vocab.update({g: 4 + i for i, g in enumerate(reversed(genes))})
    return vocab


def write_scgpt(path, adata, *, n_cls=3, category=False, flash=True, seed=0, args_extra=None, state_edit=None):
    """Write best_model.pt, args.json, vocab.json in the official layout; return the reference model."""
    torch.manual_seed(seed)
    vocab = _vocab(adata)
    ref = RefScGPT(len(vocab) + 2, n_cls, category_bins=53 if category else None).eval()
    state = ref.state_dict()
    if flash:  # flash-attention naming of the whole-human checkpoints
        state = {k.replace("self_attn.in_proj_weight", "self_attn.Wqkv.weight")
                 .replace("self_attn.in_proj_bias", "self_attn.Wqkv.bias"): v for k, v in state.items()}
    if state_edit:
        state_edit(state)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(state, path / "best_model.pt")
    args = {"embsize": D, "nheads": HEADS, "d_hid": D_HID, "nlayers": LAYERS, "n_layers_cls": 3, "dropout": 0.2,
            "pad_token": "<pad>", "pad_value": 51 if category else -2, "n_bins": 51, "input_style": "binned",
            "input_emb_style": "category" if category else "continuous", "max_seq_len": 1200}
    args.update(args_extra or {})
    (path / "args.json").write_text(json.dumps(args))
    (path / "vocab.json").write_text(json.dumps(vocab))
    return ref, vocab


def _scgpt_binning(row, n_bins=51):
    row = row.astype(np.float64)
    out = np.zeros_like(row)
    nz = row > 0
    if nz.any():
        out[nz] = np.digitize(row[nz], np.quantile(row[nz], np.linspace(0, 1, n_bins - 1)))
    return out


def _setup(adata, **kw):
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type", **kw)


# ----------------------------------------------------------------------------- scGPT
@pytest.mark.parametrize(("flash", "category"), [(True, False), (False, False), (True, True)])
def test_scgpt_dense_reproduces_reference(adata, tmp_path, flash, category):
    ref, vocab = write_scgpt(tmp_path / "ckpt", adata, flash=flash, category=category)
    _setup(adata)
    model = gh.GenoHoptionModel(adata, pretrained=tmp_path / "ckpt", attention="dense", dropout=0.0,
                                max_seq_len=16)
    module = model.module.eval()
    x = torch.from_numpy(adata.X[:10])
    with torch.no_grad():
        h, tok = module.encode_tokens(x)
        logits = module(x)["logits"]
        # reference inputs built independently: symbols → vocab, scGPT binning over in-vocabulary genes
        in_vocab = np.array([g in vocab for g in adata.var_names])
        genes = tok.genes.numpy()
        assert not np.isin(np.flatnonzero(~in_vocab), genes).any()  # unmatched genes are dropped
        ids = np.where(genes >= 0, [[vocab.get(adata.var_names[g], -9) for g in row] for row in genes], vocab["<pad>"])
        ids[:, 0] = vocab["<cls>"]
        binned = np.stack([_scgpt_binning(r * in_vocab) for r in adata.X[:10]])
        values = np.where(genes >= 0, np.take_along_axis(binned, genes.clip(0), 1), 0.0)
        values[tok.padding_mask.numpy()] = 51 if category else -2
        pad = tok.padding_mask
        h_ref, logits_ref, _ = ref(torch.from_numpy(ids), torch.from_numpy(values).float(), pad)
    torch.testing.assert_close(h[~pad], h_ref[~pad], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, logits_ref, atol=1e-5, rtol=1e-5)
    rep = model.pretrained_report_
    assert rep.n_genes_matched == N_GENES - 2 and rep.gene_id_type == "symbol"
    assert not rep.missing and not rep.shape_mismatches
    assert "transformer_encoder.layers.1.self_attn.Wqkv.weight" in rep.matched
    assert {"decoder.fc.0.weight", "decoder.fc.4.bias"} <= set(rep.unexpected)


@pytest.mark.parametrize("attention", ["ppr", "heat", "mask"])
def test_scgpt_sparse_reuses_every_pretrained_weight(adata, tmp_path, attention):
    ref, _ = write_scgpt(tmp_path / "ckpt", adata)
    _setup(adata)
    model = gh.GenoHoptionModel(adata, pretrained=tmp_path / "ckpt", attention=attention, dropout=0.0)
    state = model.module.state_dict()
    for k, v in ref.state_dict().items():
        mk = "backbone." + k.replace("in_proj_weight", "Wqkv.weight").replace("in_proj_bias", "Wqkv.bias")
        if k.startswith("cls_decoder."):
            mk = k
        if mk in state:
            torch.testing.assert_close(state[mk], v)
        else:
            assert k.startswith("decoder."), k
    with torch.no_grad():
        out = model.module.eval()(torch.from_numpy(adata.X[:6]))
    assert torch.isfinite(out["logits"]).all()


def test_scgpt_finetune_train_save_load(adata, tmp_path):
    write_scgpt(tmp_path / "ckpt", adata, n_cls=1)  # pretraining head with another class count
    _setup(adata)
    model = gh.GenoHoptionModel(adata, pretrained=tmp_path / "ckpt", attention="ppr", max_seq_len=16)
    rep = model.pretrained_report_
    assert {k for k, *_ in rep.shape_mismatches} == {"cls_decoder.out_layer.weight", "cls_decoder.out_layer.bias"}
    assert "encoder.embedding.weight" in rep.matched and "cls_decoder._decoder.0.weight" in rep.matched
    assert f"pretrained from {tmp_path / 'ckpt'}" in repr(model)
    model.train(**TRAIN)
    assert model.is_trained_
    before = model.predict(adata.copy())
    model.save(tmp_path / "m")
    loaded = gh.GenoHoptionModel.load(tmp_path / "m")
    assert loaded.init_params_["non_kwargs"]["pretrained"] is None
    after = loaded.predict(adata.copy())
    assert (before == after).all()
    torch.testing.assert_close(loaded.module.backbone.gene_to_token, model.module.backbone.gene_to_token)


def test_scgpt_gene_symbols_column_and_coverage(adata, tmp_path):
    write_scgpt(tmp_path / "ckpt", adata)
    b = adata.copy()
    b.var["symbol"] = b.var_names
    b.var_names = b.var["ensembl"].to_numpy()
    _setup(b)
    with pytest.raises(ValueError, match=r"look like Ensembl ids.*gene_symbols"):
        gh.GenoHoptionModel(b, pretrained=tmp_path / "ckpt")
    model = gh.GenoHoptionModel(b, pretrained=tmp_path / "ckpt", gene_symbols="symbol")
    assert model.pretrained_report_.n_genes_matched == N_GENES - 2
    with pytest.raises(KeyError, match="gene_symbols"):
        gh.GenoHoptionModel(b, pretrained=tmp_path / "ckpt", gene_symbols="nope")
    c = adata.copy()
    c.var_names = [f"X{i}" if i > 4 else g for i, g in enumerate(c.var_names)]
    _setup(c)
    with pytest.warns(UserWarning, match=r"Only 4 of 24 genes"):
        gh.GenoHoptionModel(c, pretrained=tmp_path / "ckpt")


def test_scgpt_bad_checkpoints(adata, tmp_path):
    _setup(adata)
    write_scgpt(tmp_path / "ok", adata)
    with pytest.raises(FileNotFoundError, match="not found"):
        gh.GenoHoptionModel(adata, pretrained=tmp_path / "absent")
    (tmp_path / "ok" / "vocab.json").rename(tmp_path / "vocab.json")
    with pytest.raises(FileNotFoundError, match=r"vocab.json"):
        gh.GenoHoptionModel(adata, pretrained=tmp_path / "ok")

    write_scgpt(tmp_path / "args", adata, args_extra={"embsize": 32})
    with pytest.raises(CheckpointError, match="embsize=32"):
        gh.GenoHoptionModel(adata, pretrained=tmp_path / "args")

    def wrong_shape(state):
        state["transformer_encoder.layers.1.linear2.weight"] = torch.zeros(D, D_HID + 1)

    write_scgpt(tmp_path / "shape", adata, state_edit=wrong_shape)
    with pytest.raises(CheckpointError, match=r"transformer_encoder\.layers\.1\.linear2\.weight"):
        gh.GenoHoptionModel(adata, pretrained=tmp_path / "shape")

    write_scgpt(tmp_path / "missing", adata, state_edit=lambda s: s.pop("encoder.enc_norm.bias"))
    with pytest.raises(CheckpointError, match=r"missing backbone keys \['encoder\.enc_norm\.bias'\]"):
        gh.GenoHoptionModel(adata, pretrained=tmp_path / "missing")

    write_scgpt(tmp_path / "dsbn", adata, state_edit=lambda s: s.update({"dsbn.bns.0.weight": torch.ones(D)}))
    with pytest.raises(CheckpointError, match=r"dsbn.bns.0.weight"):
        gh.GenoHoptionModel(adata, pretrained=tmp_path / "dsbn")

    write_scgpt(tmp_path / "extra", adata, state_edit=lambda s: s.update({"my_head.weight": torch.ones(2)}))
    with pytest.warns(UserWarning, match="my_head.weight"):
        model = gh.GenoHoptionModel(adata, pretrained=tmp_path / "extra")
    assert "my_head.weight" in model.pretrained_report_.unexpected


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file when unpickled


def test_checkpoint_carrying_code_is_refused(adata, tmp_path):
    _setup(adata)
    write_scgpt(tmp_path / "ckpt", adata)
    marker = tmp_path / "PWNED"
    state = torch.load(tmp_path / "ckpt" / "best_model.pt", weights_only=True)
    state["payload"] = _Evil(marker)
    torch.save(state, tmp_path / "ckpt" / "best_model.pt")
    with pytest.raises(UnsafePickleError, match="not executed"):
        gh.GenoHoptionModel(adata, pretrained=tmp_path / "ckpt")
    assert not marker.exists()


# ----------------------------------------------------------------------------- Geneformer
def write_geneformer(bert, path, adata, *, special=False, weights="safetensors", names=True, numpy_values=True):
    """Hugging Face BERT directory + Geneformer dictionaries (values as NumPy scalars, as the official ones)."""
    ens = list(adata.var["ensembl"])
    tokens = {"<pad>": 0, "<mask>": 1}
    if special:
        tokens.update({"<cls>": 2, "<eos>": 3})
    tokens.update({e: 4 + i for i, e in enumerate(ens[:-2])})  # two genes unknown to the model
    medians = {e: 0.5 + 0.1 * i for i, e in enumerate(ens[:-2])}
    if numpy_values:
        tokens = {k: np.int64(v) for k, v in tokens.items()}
        medians = {k: np.float32(v) for k, v in medians.items()}
    vocab = 4 + N_GENES
    sd = bert.random_state(vocab, D, HEADS, LAYERS, D_HID, 32)
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["BertForMaskedLM"], "hidden_act": "relu", "hidden_size": D, "intermediate_size": D_HID,
           "layer_norm_eps": 1e-12, "max_position_embeddings": 32, "model_type": "bert", "num_attention_heads": HEADS,
           "num_hidden_layers": LAYERS, "pad_token_id": 0, "position_embedding_type": "absolute",
           "type_vocab_size": 2, "vocab_size": vocab}
    (path / "config.json").write_text(json.dumps(cfg))
    if weights == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))
    else:
        torch.save(sd, path / "pytorch_model.bin")
    for name, obj in (("token_dictionary", tokens), ("gene_median_dictionary", medians)):
        (path / f"{name}.pkl").write_bytes(pickle.dumps(obj))
    if names:
        (path / "gene_name_id_dict.pkl").write_bytes(pickle.dumps(dict(zip(adata.var_names, ens, strict=True))))
    return sd


@pytest.mark.parametrize(("special", "weights"), [(False, "safetensors"), (True, "bin")])
def test_geneformer_dense_reproduces_bert(adata, tmp_path, special, weights, bert):
    sd = write_geneformer(bert, tmp_path / "gf", adata, special=special, weights=weights)
    adata.var_names = adata.var["ensembl"].to_numpy()
    _setup(adata)
    model = gh.GenoHoptionModel(adata, backbone="geneformer", pretrained=tmp_path / "gf", attention="dense",
                                dropout=0.0, max_seq_len=20)
    rep = model.pretrained_report_
    assert rep.n_genes_matched == N_GENES - 2 and rep.gene_id_type == "ensembl"
    assert "bert.encoder.layer.1.attention.self.{query,key,value}.weight" in rep.matched
    assert "bert.encoder.layer.1.attention.output.dense.weight" in rep.matched
    assert "cls.predictions.bias" in rep.unexpected
    module = model.module.eval()
    x = torch.from_numpy(adata.X[:8])
    with torch.no_grad():
        h, tok = module.encode_tokens(x)
        z = module(x)["z"]
    # reference: Geneformer tokens from the dictionaries, then BERT
    tokens = pickle.loads((tmp_path / "gf" / "token_dictionary.pkl").read_bytes())
    ids = np.full(tok.genes.shape, 0)
    for i, row in enumerate(tok.genes.numpy()):
        for j, g in enumerate(row):
            if 0 <= g < N_GENES:
                ids[i, j] = tokens[adata.var_names[g]]
            elif g == N_GENES:
                ids[i, j] = tokens["<eos>"]
        if special:
            ids[i, 0] = tokens["<cls>"]
    with torch.no_grad():
        ref = bert.reference(sd, torch.from_numpy(ids), tok.padding_mask, heads=HEADS)
    pad = tok.padding_mask
    torch.testing.assert_close(h[~pad], ref[~pad], atol=1e-5, rtol=1e-5)
    is_gene = (~pad & (tok.genes >= 0) & (tok.genes < N_GENES)).float()
    torch.testing.assert_close(z, (ref * is_gene[..., None]).sum(1) / is_gene.sum(1, keepdim=True), atol=1e-5,
                               rtol=1e-5)
    # rank order: decreasing count / total / median
    med = np.array([0.5 + 0.1 * i for i in range(N_GENES - 2)] + [np.nan, np.nan])
    first = 1 if special else 0
    for i in range(3):
        v = adata.X[i] / adata.X[i].sum() * 1e4 / med
        g = tok.genes[i, first:].numpy()
        g = g[(g >= 0) & (g < N_GENES)]
        assert (np.diff(v[g]) <= 1e-6).all()


def test_geneformer_symbols_translated_finetune(adata, tmp_path, bert):
    write_geneformer(bert, tmp_path / "gf", adata)
    b = adata.copy()
    b.X = np.log1p(b.X)
    _setup(b)
    with pytest.warns(UserWarning, match="counts"):  # log-normalised data → warning naming the counts layer
        gh.GenoHoptionModel(b, backbone="geneformer", pretrained=tmp_path / "gf")
    _setup(adata)
    model = gh.GenoHoptionModel(adata, backbone="geneformer", pretrained=tmp_path / "gf", attention="heat",
                                max_seq_len=16)
    assert model.pretrained_report_.gene_id_type == "symbol"
    assert model.pretrained_report_.n_genes_matched == N_GENES - 2
    assert {k for k in model.pretrained_report_.missing} >= {"cls_decoder.out_layer.weight"}
    model.train(**TRAIN)
    assert np.isfinite(model.get_latent_representation()).all()


def test_geneformer_bad_input(adata, tmp_path, bert):
    write_geneformer(bert, tmp_path / "gf", adata, names=False)
    _setup(adata)
    with pytest.raises(ValueError, match=r"Geneformer needs Ensembl ids.*gene_name_id_dict"):
        gh.GenoHoptionModel(adata, backbone="geneformer", pretrained=tmp_path / "gf")
    (tmp_path / "gf" / "gene_median_dictionary.pkl").unlink()
    with pytest.raises(FileNotFoundError, match="gene_median_dictionary"):
        gh.GenoHoptionModel(adata, backbone="geneformer", pretrained=tmp_path / "gf")
    write_geneformer(bert, tmp_path / "gf2", adata)
    cfg = json.loads((tmp_path / "gf2" / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "gf2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing backbone keys \['bert\.encoder\.layer\.2\."):
        gh.GenoHoptionModel(adata, backbone="geneformer", pretrained=tmp_path / "gf2")


def test_geneformer_dictionary_carrying_code_is_refused(adata, tmp_path, bert):
    write_geneformer(bert, tmp_path / "gf", adata)
    marker = tmp_path / "PWNED"
    (tmp_path / "gf" / "token_dictionary.pkl").write_bytes(pickle.dumps({"<pad>": _Evil(marker)}))
    _setup(adata)
    with pytest.raises(UnsafePickleError, match=r"token_dictionary.pkl: refused to load .*open.*not executed"):
        gh.GenoHoptionModel(adata, backbone="geneformer", pretrained=tmp_path / "gf")
    assert not marker.exists()


def test_geneformer_from_scratch_trains(adata):
    _setup(adata)
    model = gh.GenoHoptionModel(adata, backbone="geneformer", attention="ppr", d_model=16, n_heads=2, n_layers=1,
                                d_hid=16, max_seq_len=16)
    model.train(**TRAIN)
    assert model.get_latent_representation().shape == (N_CELLS, 2 * 16)  # mean of gene tokens + expression path


# ----------------------------------------------------------------------------- real vocabularies
def test_real_scgpt_vocabulary_maps_pbmc_symbols(shared_data):
    vocab = json.loads((shared_data / "vocab" / "scgpt" / "default_census_vocab.json").read_text())
    assert len(vocab) == 60_694
    vocab.update({"<pad>": len(vocab), "<cls>": len(vocab) + 1, "<eoc>": len(vocab) + 2})
    ckpt = PretrainedCheckpoint("scgpt", shared_data, {}, {}, vocab)
    genes = gh.datasets.pbmc68k_reduced().var_names
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = map_genes(genes, ckpt)
    assert m.n_matched > 0.9 * len(genes)
    with pytest.raises(ValueError, match="Ensembl"):
        map_genes([f"ENSG{i:011d}" for i in range(50)], ckpt)


def test_real_geneformer_dictionaries_load_safely(shared_data, tmp_path):
    src = shared_data / "vocab" / "geneformer"
    d = tmp_path / "gf"
    d.mkdir()
    cfg = json.loads((src / "geneformer-6L-30M_config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg))
    for f in ("token_dictionary.pkl", "gene_median_dictionary.pkl", "gene_name_id_dict.pkl"):
        (d / f).symlink_to(src / f)
    save_file({"bert.embeddings.word_embeddings.weight": torch.zeros(1, 1)}, str(d / "model.safetensors"))
    ckpt = read_pretrained(d, "geneformer")  # dictionaries through the restricted unpickler
    assert len(ckpt.vocab) == 25_426 and ckpt.backbone_config["hidden_size"] == 256
    assert ckpt.backbone_config["cls_token_id"] is None  # V1: no <cls>/<eos>
    assert all(type(v) is int for v in ckpt.vocab.values())
    genes = gh.datasets.pbmc68k_reduced().var_names
    m = map_genes(genes, ckpt)
    assert m.id_type == "symbol" and m.n_matched > 0.8 * len(genes)
    assert np.isfinite(m.gene_medians[m.gene_to_token >= 0]).all()
