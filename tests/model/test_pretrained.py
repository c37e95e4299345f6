"""Pretrained scGPT / Geneformer checkpoints against the originals' own code.

References: scGPT 0.2.4's ``TransformerModel``, ``binning``, ``DataCollator``, ``load_pretrained`` and
``get_batch_cell_embeddings`` (the wheel, installed without dependencies; ``scgpt`` fixture) and Hugging
Face ``transformers``' ``BertForMaskedLM`` (the model class of Geneformer checkpoints; ``bert`` fixture)
with Geneformer's tokenizer (``rank_genes``, ``format_cell_features``) and ``EmbExtractor`` conventions
written out below (Geneformer is not on PyPI). Small random models in the official layouts; cell
embeddings from an AnnData compared to ``MAX_REL`` (max |ours - theirs| / max |theirs|). Also: every tensor
accounted for, export back to the original layouts, safety and bad input.
"""

import json
import os
import pickle
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import save_file

import genohoption as gh
from genohoption._safe_pickle import UnsafePickleError
from genohoption.data import TokenRandom
from genohoption.model import (
    CheckpointError,
    PretrainedCheckpoint,
    export_pretrained,
    map_genes,
    read_pretrained,
)

N_GENES, N_CELLS = 24, 48
D, HEADS, D_HID, LAYERS = 16, 2, 24, 2
TRAIN = {"max_epochs": 1, "batch_size": 16, "enable_progress_bar": False, "log_every_n_steps": 1}
MAX_REL = 1e-4
"""Agreement required with the original code: max |ours - theirs| / max |theirs| over all cells and dimensions."""


def max_rel(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


# ----------------------------------------------------------------------------- data
@pytest.fixture
def adata():
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.uniform(0.2, 2.0, N_GENES), (N_CELLS, N_GENES)).astype(np.float32)
    a = ad.AnnData(counts)  # integer counts: many tied values within a cell, so scGPT's tie-breaking matters
    a.var_names = [f"GENE{i}" for i in range(N_GENES)]
    a.var["ensembl"] = [f"ENSG{i:011d}" for i in range(N_GENES)]
    a.obs_names = [f"c{i}" for i in range(N_CELLS)]
    a.obs["cell_type"] = pd.Categorical(rng.choice(["A", "B", "C"], N_CELLS))
    rows = np.repeat(np.arange(N_GENES), 2)
    cols = np.stack([(np.arange(N_GENES) + 1) % N_GENES, (np.arange(N_GENES) + 5) % N_GENES], 1).ravel()
    a.varp["gene_graph"] = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(N_GENES, N_GENES))
    return a


def _setup(adata, **kw):
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type", **kw)


# ----------------------------------------------------------------------------- scGPT: official layouts and pipeline
def _vocab(adata, drop=(3, 7)):
    genes = [g for i, g in enumerate(adata.var_names) if i not in drop]  # two genes outside the vocabulary
    vocab = {"<pad>": 0, "<cls>": 1, "<eoc>": 2, "OTHER1": 3}
    vocab.update({g: 4 + i for i, g in enumerate(reversed(genes))})
    return vocab


def _scgpt_model(scgpt, vocab, args, n_cls=1):
    """``TransformerModel`` as scGPT's ``embed_data`` builds it (flash attention asked for, absent here: scGPT
    falls back to torch's ``TransformerEncoderLayer``), with the value encoder of ``args.json``."""
    extra = {}
    if args.get("input_emb_style") == "category":
        extra = {"input_emb_style": "category", "n_input_bins": args["n_input_bins"]}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flash-attn is not installed", category=UserWarning)
        return scgpt.TransformerModel(
            ntoken=len(vocab), d_model=args["embsize"], nhead=args["nheads"], d_hid=args["d_hid"],
            nlayers=args["nlayers"], nlayers_cls=args["n_layers_cls"], n_cls=n_cls, vocab=vocab,
            dropout=args["dropout"], pad_token=args["pad_token"], pad_value=args["pad_value"], do_mvc=True,
            do_dab=False, use_batch_labels=False, domain_spec_batchnorm=False, explicit_zero_prob=False,
            use_fast_transformer=True, fast_transformer_backend="flash", pre_norm=False, **extra,
        )


def write_scgpt(scgpt, path, adata, *, layout="whole-human", category=False, n_cls=1, seed=0, args_extra=None,
                state_edit=None):
    """A random scGPT ``TransformerModel`` saved in an official layout; returns its state dict as saved.

    ``"whole-human"``: as the released pretrained checkpoint (flash-attention ``Wqkv`` names, ``flag_encoder``,
    no classifier); ``"finetuned"``: as scGPT's annotation fine-tuning saves (torch ``in_proj`` names,
    ``cls_decoder`` with ``n_cls`` outputs).
    """
    vocab = _vocab(adata)
    args = {"embsize": D, "nheads": HEADS, "d_hid": D_HID, "nlayers": LAYERS, "n_layers_cls": 3, "dropout": 0.2,
            "pad_token": "<pad>", "pad_value": 51 if category else -2, "n_bins": 51, "input_style": "binned",
            "input_emb_style": "category" if category else "continuous", "max_seq_len": 1200}
    if category:
        args["n_input_bins"] = 53
    torch.manual_seed(seed)
    model = _scgpt_model(scgpt, vocab, args, n_cls=n_cls)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # no trivial weight (LayerNorm affine parameters included)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if layout == "whole-human":
        state = {k.replace("self_attn.in_proj_", "self_attn.Wqkv."): v for k, v in state.items()
                 if not k.startswith("cls_decoder.")}
        state["flag_encoder.weight"] = torch.randn(2, D, generator=g)
    if state_edit:
        state_edit(state)
    args.update(args_extra or {})
    path.mkdir(parents=True, exist_ok=True)
    torch.save(state, path / "best_model.pt")
    (path / "args.json").write_text(json.dumps(args))
    (path / "vocab.json").write_text(json.dumps(vocab))
    return state


def scgpt_embed(scgpt, path, adata, monkeypatch, *, seed, max_length=1200, batch_size=64):
    """scGPT's ``embed_data`` steps on ``adata`` with the checkpoint folder ``path``, in one process.

    Vocabulary match on ``var_names`` (a dict of ``vocab.json`` in place of torchtext's ``GeneVocab``), the
    genes found, ``TransformerModel`` from ``args.json`` loaded with scGPT's ``load_pretrained``, then scGPT's
    own ``get_batch_cell_embeddings`` (its ``DataCollator`` and ``binning``) after ``numpy.random.seed(seed)``
    and ``torch.manual_seed(seed)``. Its data loader gets no worker process (``os.sched_getaffinity``
    patched), so that its random draws come from these two generators in cell order.
    """
    vocab = json.loads((path / "vocab.json").read_text())
    args = json.loads((path / "args.json").read_text())
    ids = np.array([vocab.get(g, -1) for g in adata.var_names])
    sub = adata[:, ids >= 0].copy()
    model = _scgpt_model(scgpt, vocab, args)
    scgpt.load_pretrained(model, torch.load(path / "best_model.pt", weights_only=True), verbose=False)
    model.eval()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set())  # num_workers = min(0, batch_size) = 0
    np.random.seed(seed)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*CUDA is not available", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*pin_memory", category=UserWarning)
        # torch's TransformerEncoder fast path in evaluation (torch/nn/modules/transformer.py)
        warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors", category=UserWarning)
        return scgpt.get_batch_cell_embeddings(sub, cell_embedding_mode="cls", model=model, vocab=vocab,
                                               max_length=max_length, batch_size=batch_size, model_configs=args,
                                               gene_ids=ids[ids >= 0], use_batch_labels=False)


@pytest.mark.parametrize(("layout", "category"), [("whole-human", False), ("finetuned", False), ("whole-human", True)])
def test_scgpt_cell_embeddings_are_get_batch_cell_embeddings(scgpt, adata, tmp_path, monkeypatch, layout, category):
    write_scgpt(scgpt, tmp_path / "ckpt", adata, layout=layout, category=category, n_cls=3)
    _setup(adata)
    model = gh.GenoHoptionModel(adata, pretrained=tmp_path / "ckpt", attention="dense", conventions={"seed": 11})
    assert model.module.conventions.cls_value == (51 if category else -2)
    ours = model.get_latent_representation(batch_size=7)
    theirs = scgpt_embed(scgpt, tmp_path / "ckpt", adata, monkeypatch, seed=11)
    assert ours.shape == theirs.shape == (N_CELLS, D)
    assert max_rel(ours, theirs) <= MAX_REL
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)
    # the conventions are what makes the difference: each of scGPT's, changed alone, moves the embeddings
    for change in ({"bin_ties": "top"}, {"cls_value": 0 if not category else 5}, {"emb_norm": None}, {"seed": 12}):
        other = gh.GenoHoptionModel(adata, pretrained=tmp_path / "ckpt", attention="dense",
                                    conventions={"seed": 11, **change})
        assert max_rel(other.get_latent_representation(), theirs) > 1e-3, change


def test_scgpt_random_gene_subset_above_max_length_is_scgpts(scgpt, adata, tmp_path, monkeypatch):
    write_scgpt(scgpt, tmp_path / "ckpt", adata)
    max_length = 8  # CLS + 7 genes; every cell expresses more
    assert ((adata.X > 0).sum(1) > max_length - 1).all()
    theirs = scgpt_embed(scgpt, tmp_path / "ckpt", adata, monkeypatch, seed=5, max_length=max_length, batch_size=20)
    _setup(adata)
    model = gh.GenoHoptionModel(adata, pretrained=tmp_path / "ckpt", attention="dense", max_seq_len=max_length,
                                conventions={"seed": 5})
    module = model.module.eval()
    rng = TokenRandom(5)
    # scGPT's DataLoader draws its workers' base seed from torch's generator before the first minibatch
    torch.empty((), dtype=torch.int64).random_(generator=rng.generator)
    with torch.no_grad():
        ours = np.concatenate([module(torch.from_numpy(adata.X[i:i + 20]), rng=rng)["latent"].numpy()
                               for i in range(0, N_CELLS, 20)])
    assert max_rel(ours, theirs) <= MAX_REL
    # the model's own passes: one seeded stream per pass, so the minibatch size changes nothing
    a, b = model.get_latent_representation(batch_size=5), model.get_latent_representation(batch_size=48)
    np.testing.assert_allclose(a, b, atol=1e-6)
    top = gh.GenoHoptionModel(adata, pretrained=tmp_path / "ckpt", attention="dense", max_seq_len=max_length,
                              conventions={"seed": 5, "sampling": "top"})
    assert max_rel(top.get_latent_representation(), a) > 1e-3


def test_scgpt_tie_breaking_is_scgpt_binning(scgpt):
    """The binned values themselves: scGPT's ``binning`` (``_digitize(side="both")``) cell after cell."""
    from genohoption.data import bin_values

    rng = np.random.default_rng(4)
    x = rng.poisson(1.5, (30, 40)).astype(np.float32)
    x[3] = 0
    x[4, :] = 2.0  # one value, every edge tied
    x[5] = np.round(x[5] * 0.37, 2)  # non-integer values
    np.random.seed(9)
    expected = np.zeros_like(x)
    for i, row in enumerate(x):
        nz = row > 0
        if nz.any():
            expected[i, nz] = scgpt.binning(row[nz], n_bins=51)
    got = bin_values(torch.from_numpy(x), 51, side="both", uniform=TokenRandom(9).uniform_at(torch.from_numpy(x) > 0))
    np.testing.assert_array_equal(got.numpy(), expected)
    assert (got.numpy() != bin_values(torch.from_numpy(x), 51).numpy()).mean() > 0.2  # ties to the top bin differ


@pytest.mark.parametrize("attention", ["ppr", "heat", "mask"])
def test_scgpt_sparse_reuses_every_pretrained_weight(scgpt, adata, tmp_path, attention):
    saved = write_scgpt(scgpt, tmp_path / "ckpt", adata, layout="finetuned", n_cls=3)
    _setup(adata)
    model = gh.GenoHoptionModel(adata, pretrained=tmp_path / "ckpt", attention=attention, dropout=0.0)
    state = model.module.state_dict()
    vocab_rows = state["backbone.encoder.embedding.weight"]
    for k, v in saved.items():
        mk = k if k.startswith("cls_decoder.") else "backbone." + k.replace("in_proj_", "Wqkv.")
        if mk in state:
            torch.testing.assert_close(state[mk], v, rtol=0, atol=0)
        else:
            assert k.startswith(("decoder.", "mvc_decoder.")), k
    assert vocab_rows.shape[0] == len(_vocab(adata))
    with torch.no_grad():
        out = model.module.eval()(torch.from_numpy(adata.X[:6]))
    assert torch.isfinite(out["logits"]).all()


# ----------------------------------------------------------------------------- scGPT: every tensor accounted for
def _module_keys_loaded(model):
    """Module keys whose values came from the checkpoint: the backbone's (less the vocabulary map) and the heads'."""
    rep = model.pretrained_report_
    keys = model.module.state_dict()
    return {k for k in keys if (k.startswith("backbone.") and k not in rep.from_data) or k in rep.matched}


@pytest.mark.parametrize("cell_emb", ["cls", "cls+expr"])
def test_scgpt_every_tensor_accounted_for(scgpt, adata, tmp_path, cell_emb):
    saved = write_scgpt(scgpt, tmp_path / "ckpt", adata)  # the whole-human layout
    _setup(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # flag_encoder.weight, decoders: known, no warning
        model = gh.GenoHoptionModel(adata, pretrained=tmp_path / "ckpt", cell_emb=cell_emb)
    rep = model.pretrained_report_
    assert sorted(rep.matched + rep.unexpected) == sorted(saved)  # each checkpoint tensor once
    assert len(rep.matched) == 3 + 6 + 12 * LAYERS  # gene encoder, value encoder, layers: all of them
    assert set(rep.unexpected) == {*(k for k in saved if k.startswith(("decoder.", "mvc_decoder."))),
                                   "flag_encoder.weight"}
    keys = set(model.module.state_dict())
    loaded = _module_keys_loaded(model)
    assert loaded | set(rep.missing) | set(rep.from_data) == keys  # each module tensor once
    assert not loaded & set(rep.missing) and not loaded & set(rep.from_data) and not set(rep.missing) & set(rep.from_data)
    assert set(rep.from_data) == {"graph_indptr", "graph_indices", "backbone.gene_to_token"}
    assert ("expr_proj.weight" in rep.missing) == (cell_emb == "cls+expr")
    assert {k for k in rep.missing if k.startswith("cls_decoder.out_layer")} == {"cls_decoder.out_layer.weight",
                                                                                   "cls_decoder.out_layer.bias"}
    assert "expr_proj" in str(rep) or cell_emb == "cls"


def test_scgpt_finetune_train_save_load(scgpt, adata, tmp_path):
    write_scgpt(scgpt, tmp_path / "ckpt", adata, layout="finetuned", n_cls=1)  # head with another class count
    _setup(adata)
    model = gh.GenoHoptionModel(adata, pretrained=tmp_path / "ckpt", attention="ppr", max_seq_len=16)
    rep = model.pretrained_report_
    assert {k for k, *_ in rep.shape_mismatches} == {"cls_decoder.out_layer.weight", "cls_decoder.out_layer.bias"}
    assert "encoder.embedding.weight" in rep.matched and "cls_decoder._decoder.0.weight" in rep.matched
    assert f"pretrained from {tmp_path / 'ckpt'}" in repr(model)
    model.train(**TRAIN)
    assert model.is_trained_
    before = model.predict(adata.copy())
    latent = model.get_latent_representation()
    model.save(tmp_path / "m")
    loaded = gh.GenoHoptionModel.load(tmp_path / "m")
    assert loaded.init_params_["non_kwargs"]["pretrained"] is None
    assert loaded.init_params_["non_kwargs"]["conventions"] == model.init_params_["non_kwargs"]["conventions"]
    after = loaded.predict(adata.copy())
    assert (before == after).all()
    np.testing.assert_allclose(loaded.get_latent_representation(adata.copy()), latent, atol=1e-6)
    torch.testing.assert_close(loaded.module.backbone.gene_to_token, model.module.backbone.gene_to_token)


# ----------------------------------------------------------------------------- Geneformer: layouts and pipeline
def write_geneformer(bert, path, adata, *, special=False, weights="safetensors", names=True, numpy_values=False,
                     layers=3, max_pos=16, seed=0):
    """A random ``BertForMaskedLM`` saved as a Geneformer folder (``save_pretrained``, or ``pytorch_model.bin``) with
    its dictionaries; returns the model. Medians are random floats (as the official ones), so no two genes tie."""
    ens = list(adata.var["ensembl"])
    tokens = {"<pad>": 0, "<mask>": 1}
    if special:
        tokens.update({"<cls>": 2, "<eos>": 3})
    tokens.update({e: 4 + i for i, e in enumerate(ens[:-2])})  # two genes unknown to the model
    med = np.random.default_rng(seed + 1).uniform(0.3, 4.0, len(ens) - 2)
    medians = {e: float(m) for e, m in zip(ens[:-2], med, strict=True)}
    if numpy_values:
        tokens = {k: np.int64(v) for k, v in tokens.items()}
        medians = {k: np.float64(v) for k, v in medians.items()}
    model = bert.masked_lm(4 + N_GENES, D, HEADS, layers, D_HID, max_pos, seed=seed)
    path.mkdir(parents=True, exist_ok=True)
    if weights == "safetensors":
        model.save_pretrained(path)  # config.json + model.safetensors, as the Hugging Face hub holds Geneformer
    else:
        model.config.save_pretrained(path)
        torch.save(bert.state(model), path / "pytorch_model.bin")
    for name, obj in (("token_dictionary", tokens), ("gene_median_dictionary", medians)):
        (path / f"{name}.pkl").write_bytes(pickle.dumps(obj))
    if names:
        (path / "gene_name_id_dict.pkl").write_bytes(pickle.dumps(dict(zip(adata.var_names, ens, strict=True))))
    return model


def geneformer_tokens(counts, ensembl_ids, tokens, medians, model_input_size, special):
    """Geneformer's ``TranscriptomeTokenizer`` on float32 counts with ``n_counts = X.sum(1)``.

    ``tokenize_anndata``: genes of the median dictionary, ``X / n_counts * 10_000 / median``, ``rank_genes``
    (``numpy.argsort`` of the negated values over the cell's non-zero genes); ``format_cell_features``:
    truncation to ``model_input_size`` (V2: ``model_input_size - 2`` genes between ``<cls>`` and ``<eos>``).
    """
    loc = np.array([i for i, e in enumerate(ensembl_ids) if e in medians])
    norm = np.array([medians[ensembl_ids[i]] for i in loc])
    gene_tokens = np.array([tokens[ensembl_ids[i]] for i in loc])
    n_counts = counts.sum(1, keepdims=True)
    x_norm = sp.csr_matrix(counts[:, loc] / n_counts * 10_000 / norm)
    cells = []
    for i in range(x_norm.shape[0]):
        ids = gene_tokens[x_norm[i].indices][np.argsort(-x_norm[i].data)]
        if special:
            ids = np.concatenate([[tokens["<cls>"]], ids[: model_input_size - 2], [tokens["<eos>"]]])
        else:
            ids = ids[:model_input_size]
        cells.append(ids)
    return cells


def geneformer_embed(model, cells, pad_id, *, emb_layer, emb_mode, special):
    """Geneformer's ``EmbExtractor.get_embs`` with ``BertForMaskedLM(output_hidden_states=True)``.

    Cells padded to the longest with ``<pad>``, attention mask from the lengths, ``hidden_states[n_layers +
    emb_layer]``; ``"cls"``: position 0; ``"cell"``: ``mean_nonpadding_embs`` over the genes (``<cls>``
    and ``<eos>`` left out when present).
    """
    lengths = torch.tensor([len(c) for c in cells])
    ids = torch.full((len(cells), int(lengths.max())), pad_id, dtype=torch.long)
    for i, c in enumerate(cells):
        ids[i, : len(c)] = torch.as_tensor(c)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    n_layers = model.config.num_hidden_layers
    h = hidden[n_layers + emb_layer]
    if emb_mode == "cls":
        return h[:, 0].numpy()
    if special:
        h, lengths = h[:, 1:], lengths - 2
    keep = torch.arange(h.shape[1])[None] < lengths[:, None]
    return ((h * keep[..., None]).sum(1) / lengths[:, None]).numpy()


@pytest.mark.parametrize(("special", "weights", "conventions"), [
    (False, "safetensors", None),  # V1: mean of the genes, second-to-last layer
    (True, "bin", None),  # V2: <cls>, second-to-last layer
    (True, "safetensors", {"emb_mode": "cell", "emb_layer": 0}),
    (False, "bin", {"emb_layer": 0}),
])
def test_geneformer_cell_embeddings_are_emb_extractors(adata, tmp_path, bert, special, weights, conventions):
    bert_model = write_geneformer(bert, tmp_path / "gf", adata, special=special, weights=weights)
    b = adata.copy()
    b.var_names = b.var["ensembl"].to_numpy()
    _setup(b)
    model = gh.GenoHoptionModel(b, backbone="geneformer", pretrained=tmp_path / "gf", attention="dense",
                                conventions=conventions)
    c = model.module.conventions
    assert (c.emb_layer, c.emb_mode) == ((conventions or {}).get("emb_layer", -1),
                                         (conventions or {}).get("emb_mode", "cls" if special else "cell"))
    ours = model.get_latent_representation(batch_size=13)
    tokens = pickle.loads((tmp_path / "gf" / "token_dictionary.pkl").read_bytes())
    medians = pickle.loads((tmp_path / "gf" / "gene_median_dictionary.pkl").read_bytes())
    cells = geneformer_tokens(adata.X, list(b.var_names), tokens, medians, 16, special)
    assert max(len(c) for c in cells) == 16  # cells are truncated to the model input size
    theirs = geneformer_embed(bert_model, cells, tokens["<pad>"], emb_layer=c.emb_layer, emb_mode=c.emb_mode,
                              special=special)
    assert max_rel(ours, theirs) <= MAX_REL
    # the same tokens, in the same order
    with torch.no_grad():
        _, tok = model.module.eval().encode_tokens(torch.from_numpy(adata.X))
    ids = model.module.backbone.token_ids(tok.genes, tok.padding_mask)
    for i, cell in enumerate(cells):
        np.testing.assert_array_equal(ids[i, : len(cell)].numpy(), cell)


def test_geneformer_every_tensor_accounted_for(adata, tmp_path, bert):
    bert_model = write_geneformer(bert, tmp_path / "gf", adata, weights="bin")
    saved = bert.state(bert_model)
    b = adata.copy()
    b.var_names = b.var["ensembl"].to_numpy()
    _setup(b)
    model = gh.GenoHoptionModel(b, backbone="geneformer", pretrained=tmp_path / "gf")
    rep = model.pretrained_report_
    matched = [k.replace("{query,key,value}", part) if "{" in k else k for k in rep.matched
               for part in (("query", "key", "value") if "{" in k else ("",))]
    assert sorted(matched + rep.unexpected) == sorted(saved)
    assert {k.split(".")[0] for k in rep.unexpected} == {"cls"}  # only the MLM head is unused
    keys = set(model.module.state_dict())
    loaded = _module_keys_loaded(model)
    assert loaded | set(rep.missing) | set(rep.from_data) == keys
    assert set(rep.from_data) == {"graph_indptr", "graph_indices", "backbone.gene_to_token", "backbone.gene_medians"}
    assert set(rep.missing) == {k for k in keys if k.startswith(("cls_decoder.", "expr_proj."))}


# ----------------------------------------------------------------------------- export back to the original layouts
def test_scgpt_export_is_read_by_scgpt(scgpt, adata, tmp_path, monkeypatch):
    write_scgpt(scgpt, tmp_path / "ckpt", adata, layout="finetuned", n_cls=3)  # scGPT's classifier is reused
    _setup(adata)
    model = gh.GenoHoptionModel(adata, pretrained=tmp_path / "ckpt", attention="dense", conventions={"seed": 2})
    model.train(**TRAIN)  # fine-tuned here
    out = export_pretrained(model, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "best_model.pt", "vocab.json"]
    state = torch.load(out / "best_model.pt", weights_only=True)
    vocab = json.loads((out / "vocab.json").read_text())
    their = _scgpt_model(scgpt, vocab, json.loads((out / "args.json").read_text()), n_cls=3)
    their_keys = {k.replace("self_attn.in_proj_", "self_attn.Wqkv.") for k in their.state_dict()}
    assert set(state) <= their_keys  # every exported tensor has its place in scGPT's model
    assert set(their_keys) - set(state) == {k for k in their_keys if k.startswith(("decoder.", "mvc_decoder."))}
    for k, v in model.module.cls_decoder.state_dict().items():
        torch.testing.assert_close(state[f"cls_decoder.{k}"], v, rtol=0, atol=0)
    theirs = scgpt_embed(scgpt, out, adata, monkeypatch, seed=2)
    assert max_rel(model.get_latent_representation(), theirs) <= MAX_REL
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_pretrained(model, out)
    # and back: the export is an scGPT checkpoint for this package too
    again = gh.GenoHoptionModel(adata, pretrained=out, attention="dense", conventions={"seed": 2})
    assert not again.pretrained_report_.missing
    np.testing.assert_allclose(again.get_latent_representation(), theirs, atol=1e-5)


def test_geneformer_export_is_read_by_transformers(adata, tmp_path, bert):
    write_geneformer(bert, tmp_path / "gf", adata, special=True)
    b = adata.copy()
    b.var_names = b.var["ensembl"].to_numpy()
    _setup(b)
    model = gh.GenoHoptionModel(b, backbone="geneformer", pretrained=tmp_path / "gf", attention="dense")
    model.train(**TRAIN)
    out = export_pretrained(model, tmp_path / "export")
    loaded = bert.transformers.BertForMaskedLM.from_pretrained(out).eval()
    tokens = pickle.loads((out / "token_dictionary.pkl").read_bytes())
    medians = pickle.loads((out / "gene_median_dictionary.pkl").read_bytes())
    assert set(medians) == set(tokens) - {"<pad>", "<cls>", "<eos>"} == set(b.var_names[:-2])
    cells = geneformer_tokens(adata.X, list(b.var_names), tokens, medians, 16, True)
    theirs = geneformer_embed(loaded, cells, tokens["<pad>"], emb_layer=-1, emb_mode="cls", special=True)
    assert max_rel(model.get_latent_representation(), theirs) <= MAX_REL


def test_export_of_diffusion_attention_warns(scgpt, adata, tmp_path):
    _setup(adata)
    model = gh.GenoHoptionModel(adata, attention="ppr", d_model=D, n_heads=HEADS, n_layers=1, d_hid=D_HID)
    with pytest.warns(UserWarning) as record:
        export_pretrained(model, tmp_path / "ppr")
    messages = [str(w.message) for w in record]
    assert any("attention='ppr'" in m and "dense attention" in m for m in messages), messages
    vocab = json.loads((tmp_path / "ppr" / "vocab.json").read_text())
    assert list(vocab)[:N_GENES] == list(adata.var_names) and vocab["<cls>"] == N_GENES + 1
    dense = gh.GenoHoptionModel(adata, attention="dense", d_model=D, n_heads=HEADS, n_layers=1, d_hid=D_HID)
    with pytest.warns(UserWarning, match="differ from scGPT's get_batch_cell_embeddings"):
        export_pretrained(dense, tmp_path / "dense")  # from scratch: unbinned values, no L2 norm


# ----------------------------------------------------------------------------- conventions: choices and errors
def test_conventions_defaults_and_errors(scgpt, adata, tmp_path, bert):
    write_scgpt(scgpt, tmp_path / "ckpt", adata)
    _setup(adata)
    scratch = gh.GenoHoptionModel(adata, d_model=D, n_heads=HEADS, n_layers=1, d_hid=D_HID)
    assert scratch.init_params_["non_kwargs"]["conventions"]["emb_norm"] is None
    official = gh.GenoHoptionModel(adata, pretrained=tmp_path / "ckpt")
    assert official.init_params_["non_kwargs"]["conventions"] == {
        "cls_value": -2.0, "n_bins": 51, "bin_ties": "random", "sampling": "random", "emb_layer": 0,
        "emb_mode": "cls", "emb_norm": "l2", "seed": 0}
    with pytest.raises(ValueError, match="Unknown conventions"):
        gh.GenoHoptionModel(adata, pretrained=tmp_path / "ckpt", conventions={"cls": 0})
    with pytest.raises(ValueError, match="n_bins"):
        gh.GenoHoptionModel(adata, pretrained=tmp_path / "ckpt", conventions={"n_bins": 11})
    with pytest.raises(ValueError, match="bin_ties"):
        gh.GenoHoptionModel(adata, conventions={"bin_ties": "left"})
    with pytest.raises(TypeError, match="dict"):
        gh.GenoHoptionModel(adata, conventions="scgpt")
    write_geneformer(bert, tmp_path / "gf", adata)
    with pytest.raises(ValueError, match="apply to the scGPT backbone"):
        gh.GenoHoptionModel(adata, backbone="geneformer", pretrained=tmp_path / "gf", conventions={"cls_value": 0})
    with pytest.raises(ValueError, match="needs a <cls> token"):
        gh.GenoHoptionModel(adata, backbone="geneformer", pretrained=tmp_path / "gf", conventions={"emb_mode": "cls"})


# ----------------------------------------------------------------------------- gene symbols, bad checkpoints, safety
def test_scgpt_gene_symbols_column_and_coverage(scgpt, adata, tmp_path):
    write_scgpt(scgpt, tmp_path / "ckpt", adata)
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


def test_scgpt_bad_checkpoints(scgpt, adata, tmp_path):
    _setup(adata)
    write_scgpt(scgpt, tmp_path / "ok", adata)
    with pytest.raises(FileNotFoundError, match="not found"):
        gh.GenoHoptionModel(adata, pretrained=tmp_path / "absent")
    (tmp_path / "ok" / "vocab.json").rename(tmp_path / "vocab.json")
    with pytest.raises(FileNotFoundError, match=r"vocab.json"):
        gh.GenoHoptionModel(adata, pretrained=tmp_path / "ok")

    write_scgpt(scgpt, tmp_path / "args", adata, args_extra={"embsize": 32})
    with pytest.raises(CheckpointError, match="embsize=32"):
        gh.GenoHoptionModel(adata, pretrained=tmp_path / "args")

    def wrong_shape(state):
        state["transformer_encoder.layers.1.linear2.weight"] = torch.zeros(D, D_HID + 1)

    write_scgpt(scgpt, tmp_path / "shape", adata, state_edit=wrong_shape)
    with pytest.raises(CheckpointError, match=r"transformer_encoder\.layers\.1\.linear2\.weight"):
        gh.GenoHoptionModel(adata, pretrained=tmp_path / "shape")

    write_scgpt(scgpt, tmp_path / "missing", adata, state_edit=lambda s: s.pop("encoder.enc_norm.bias"))
    with pytest.raises(CheckpointError, match=r"missing backbone keys \['encoder\.enc_norm\.bias'\]"):
        gh.GenoHoptionModel(adata, pretrained=tmp_path / "missing")

    write_scgpt(scgpt, tmp_path / "dsbn", adata, state_edit=lambda s: s.update({"dsbn.bns.0.weight": torch.ones(D)}))
    with pytest.raises(CheckpointError, match=r"dsbn.bns.0.weight"):
        gh.GenoHoptionModel(adata, pretrained=tmp_path / "dsbn")

    write_scgpt(scgpt, tmp_path / "extra", adata, state_edit=lambda s: s.update({"my_head.weight": torch.ones(2)}))
    with pytest.warns(UserWarning, match="my_head.weight"):
        model = gh.GenoHoptionModel(adata, pretrained=tmp_path / "extra")
    assert "my_head.weight" in model.pretrained_report_.unexpected


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file when unpickled


def test_checkpoint_carrying_code_is_refused(scgpt, adata, tmp_path):
    _setup(adata)
    write_scgpt(scgpt, tmp_path / "ckpt", adata)
    marker = tmp_path / "PWNED"
    state = torch.load(tmp_path / "ckpt" / "best_model.pt", weights_only=True)
    state["payload"] = _Evil(marker)
    torch.save(state, tmp_path / "ckpt" / "best_model.pt")
    with pytest.raises(UnsafePickleError, match="not executed"):
        gh.GenoHoptionModel(adata, pretrained=tmp_path / "ckpt")
    assert not marker.exists()



# ----------------------------------------------------------------------------- Geneformer: input, safety
def test_geneformer_symbols_translated_finetune(adata, tmp_path, bert):
    write_geneformer(bert, tmp_path / "gf", adata, numpy_values=True)  # dictionary values as NumPy scalars
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
    cfg["num_hidden_layers"] = 4
    (tmp_path / "gf2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing backbone keys \['bert\.encoder\.layer\.3\."):
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


# ----------------------------------------------------------------------------- real sizes, real vocabularies (slow)
@pytest.mark.slow
def test_real_architectures_and_vocabularies_reproduce_the_originals(scgpt, bert, shared_data, tmp_path, monkeypatch):
    """scGPT's whole-human sizes (512 wide, 8 heads, 12 layers) over its 60,694-gene vocabulary, and Geneformer
    V1 6-layer (its config.json, token and median dictionaries), random weights, on 48 PBMCs."""
    pbmc = gh.datasets.pbmc68k_reduced()[:48].copy()
    pbmc.obs["cell_type"] = pd.Categorical(np.tile(["A", "B"], 24))  # labels play no part in the embeddings
    pbmc.varp["gene_graph"] = sp.csr_matrix((pbmc.n_vars, pbmc.n_vars), dtype=np.float32)
    # scGPT
    genes = json.loads((shared_data / "vocab" / "scgpt" / "default_census_vocab.json").read_text())
    vocab = {**genes, "<pad>": len(genes), "<cls>": len(genes) + 1, "<eoc>": len(genes) + 2}
    args = {"embsize": 512, "nheads": 8, "d_hid": 512, "nlayers": 12, "n_layers_cls": 3, "dropout": 0.2,
            "pad_token": "<pad>", "pad_value": -2, "n_bins": 51, "input_style": "binned",
            "input_emb_style": "continuous", "max_seq_len": 1200}
    torch.manual_seed(0)
    model = _scgpt_model(scgpt, vocab, args)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    state = {k.replace("self_attn.in_proj_", "self_attn.Wqkv."): v for k, v in model.state_dict().items()
             if not k.startswith("cls_decoder.")}
    state["flag_encoder.weight"] = torch.randn(2, 512, generator=g)
    ckpt = tmp_path / "scGPT_human"
    ckpt.mkdir()
    torch.save(state, ckpt / "best_model.pt")
    (ckpt / "args.json").write_text(json.dumps(args))
    (ckpt / "vocab.json").write_text(json.dumps(vocab))
    del model, state
    _setup(pbmc, graph_key=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = gh.GenoHoptionModel(pbmc, pretrained=ckpt, attention="dense", conventions={"seed": 0})
    rep = ours.pretrained_report_
    assert (len(rep.matched), len(rep.unexpected)) == (3 + 6 + 12 * 12, 6 + 3 + 1)
    theirs = scgpt_embed(scgpt, ckpt, pbmc, monkeypatch, seed=0, batch_size=16)
    assert max_rel(ours.get_latent_representation(batch_size=16), theirs) <= MAX_REL
    del ours
    # Geneformer V1 6 layers
    src = shared_data / "vocab" / "geneformer"
    gf = tmp_path / "gf-6L-30M-i2048"
    gf.mkdir()
    cfg = json.loads((src / "geneformer-6L-30M_config.json").read_text())
    bert_model = bert.masked_lm(cfg["vocab_size"], cfg["hidden_size"], cfg["num_attention_heads"],
                                cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["max_position_embeddings"],
                                act=cfg["hidden_act"])
    bert_model.save_pretrained(gf)
    for f in ("token_dictionary.pkl", "gene_median_dictionary.pkl", "gene_name_id_dict.pkl"):
        (gf / f).symlink_to(src / f)
    counts = pbmc.copy()
    counts.X = np.rint(np.expm1(pbmc.X.toarray()) * pbmc.obs["n_counts"].to_numpy()[:, None] / 1e4).astype(np.float32)
    _setup(counts, graph_key=None)
    ours = gh.GenoHoptionModel(counts, backbone="geneformer", pretrained=gf, attention="dense")
    from genohoption._safe_pickle import safe_load_pickle

    tokens, medians = safe_load_pickle(src / "token_dictionary.pkl"), safe_load_pickle(src / "gene_median_dictionary.pkl")
    names = safe_load_pickle(src / "gene_name_id_dict.pkl")
    ens = [names.get(s, "") for s in counts.var_names]
    cells = geneformer_tokens(counts.X, ens, tokens, medians, cfg["max_position_embeddings"], False)
    theirs = geneformer_embed(bert_model, cells, tokens["<pad>"], emb_layer=-1, emb_mode="cell", special=False)
    assert max_rel(ours.get_latent_representation(batch_size=16), theirs) <= MAX_REL
