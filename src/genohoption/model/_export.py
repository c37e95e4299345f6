"""Write a model's backbone back in the layout of the original code (scGPT folder, Hugging Face BERT folder).

The inverse of :func:`~genohoption.model.read_pretrained`: the scGPT code (``scgpt.model.TransformerModel``
with ``scgpt.utils.load_pretrained``, as its ``embed_data`` loads a model) or Hugging Face ``transformers``
(``BertForMaskedLM.from_pretrained``, as Geneformer's ``EmbExtractor`` loads one) read the folder and,
for a model with ``attention="dense"``, give this model's token outputs; their cell-embedding pipelines
give this model's :meth:`~genohoption.GenoHoptionModel.get_latent_representation` when the model's
conventions are theirs (the defaults of a loaded checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import save_file

from ..module._inputs import Conventions
from ..nn import GeneformerBackbone

if TYPE_CHECKING:
    from ._model import GenoHoptionModel

logger = logging.getLogger(__name__)

__all__ = ["export_pretrained"]

SCGPT_FILES = ("best_model.pt", "args.json", "vocab.json")
"""Files of an scGPT checkpoint folder."""

GENEFORMER_FILES = ("config.json", "model.safetensors", "token_dictionary.pkl", "gene_median_dictionary.pkl")
"""Files of a Geneformer (Hugging Face BERT) folder."""

# what scGPT's get_batch_cell_embeddings does (its DataCollator always bins into 51 bins)
_SCGPT_PIPELINE = {"n_bins": 51, "bin_ties": "random", "sampling": "random", "emb_layer": 0, "emb_mode": "cls",
                   "emb_norm": "l2"}


def export_pretrained(model: GenoHoptionModel, dir_path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the model's backbone as an scGPT or a Geneformer checkpoint folder, for the original code.

    scGPT-style backbone: ``best_model.pt`` (a ``TransformerModel`` state dict with the released
    checkpoints' key names: ``encoder.*``, ``value_encoder.*``, ``transformer_encoder.layers.{i}.self_attn.Wqkv.*``
    …; saved with :func:`torch.save`, readable with ``torch.load(weights_only=True)``), ``args.json``
    (``embsize``, ``nheads``, ``d_hid``, ``nlayers``, ``n_layers_cls``, ``dropout``, ``pad_token``,
    ``pad_value`` = the model's ``<cls>`` value, ``n_bins``, ``input_style``, ``input_emb_style``) and
    ``vocab.json``: the model's genes that have a token (ids ``0 … m - 1`` in model order, each with its
    embedding row) and ``<pad>``, ``<cls>``, ``<eoc>`` (``m``, ``m + 1``, ``m + 2``; ``<eoc>``, unused by
    the encoder, gets a zero row). The classifier ``cls_decoder.*`` is written when scGPT's
    ``ClsDecoder`` can hold it (an annotation model with ``cell_emb="cls"``, no input normalisation);
    scGPT's expression decoders are not part of this model and are not written (the scGPT code
    initialises them; the encoder and the cell embedding do not use them).

    Geneformer backbone: a Hugging Face folder (``config.json`` of a ``BertForMaskedLM``,
    ``model.safetensors`` with ``bert.*`` keys: the packed ``Wqkv`` split back into ``query`` / ``key``
    / ``value``, ``out_proj`` written as ``attention.output.dense``), and ``token_dictionary.pkl`` /
    ``gene_median_dictionary.pkl`` keyed by the model's gene identifiers (``var_names``) with the special
    tokens (plain dicts of strings and numbers, the files Geneformer's tokenizer reads). The MLM head is
    not part of this model: ``BertForMaskedLM.from_pretrained`` initialises it (and logs so); embeddings
    do not use it.

    Parameters
    ----------
    model
        A :class:`~genohoption.GenoHoptionModel` (any task; the classifier is written for annotation
        models only).
    dir_path
        Folder to write; created if needed.
    overwrite
        Replace the files of an earlier export there.

    Returns
    -------
    The folder, as a :class:`~pathlib.Path`.

    Raises
    ------
    FileExistsError
        If one of the files exists and ``overwrite`` is false, or ``dir_path`` is a file.

    Warns
    -----
    UserWarning
        If the model's attention is not ``"dense"``: the original code runs full attention on these weights,
        so it will not give this model's outputs (graph-diffusion attention is this package's). Also, for
        an scGPT-style model whose conventions differ from what scGPT's ``get_batch_cell_embeddings`` does
        (binning into 51 bins with random ties, random gene subset, ``<cls>`` of the last layer,
        L2-normalised), naming them: scGPT's encoder still gives this model's token outputs for the same
        inputs, its embedding pipeline does not.
    """
    root = Path(dir_path)
    if root.is_file():
        raise FileExistsError(f"{root} is a file; give a folder to write the checkpoint to.")
    bb = model.module.backbone
    geneformer = isinstance(bb, GeneformerBackbone)
    names = GENEFORMER_FILES if geneformer else SCGPT_FILES
    existing = [n for n in names if (root / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{root} already holds {existing}; pass overwrite=True to replace them.")
    attention = model.params["attention"]
    if attention != "dense":
        warnings.warn(
            f"This model uses attention={attention!r} (graph diffusion on the gene graph); the original "
            f"{'Geneformer (transformers BERT)' if geneformer else 'scGPT'} code runs full dense attention on the "
            "exported weights, so it will not give this model's outputs.",
            UserWarning,
            stacklevel=2,
        )
    root.mkdir(parents=True, exist_ok=True)
    genes = np.asarray(model.var_names, dtype=str)
    if geneformer:
        _write_geneformer(root, bb, genes, model.params)
    else:
        conventions = getattr(model.module, "conventions", None)
        _write_scgpt(root, model.module, genes, model.params, conventions)
    logger.info("exported the %s backbone to %s", "geneformer" if geneformer else "scgpt", root)
    return root


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").clone().contiguous()


def _write_scgpt(root: Path, module, genes: np.ndarray, params: dict, conventions: Conventions | None) -> None:
    bb = module.backbone
    sd = {k: _cpu(v) for k, v in bb.state_dict().items()}
    emb = sd.pop("encoder.embedding.weight")
    if bb.gene_to_token is None:  # own vocabulary: genes 0 … n-1, <cls> = n, <pad> = n + 1
        keep = np.arange(len(genes))
        rows = torch.arange(len(genes))
    else:
        g2t = bb.gene_to_token.cpu()
        keep = np.flatnonzero(g2t.numpy() >= 0)
        rows = g2t[keep]
    sd.pop("gene_to_token", None)
    m = len(keep)
    weight = torch.cat([emb[rows], emb[bb.pad_id][None], emb[bb.cls_id][None], torch.zeros(1, emb.shape[1])])
    state = {"encoder.embedding.weight": weight, **sd}
    vocab = {str(g): i for i, g in enumerate(genes[keep])}
    vocab.update({"<pad>": m, "<cls>": m + 1, "<eoc>": m + 2})
    cls_value = conventions.cls_value if conventions is not None else 0.0
    n_bins = conventions.n_bins if conventions is not None else None
    head = getattr(module, "cls_decoder", None)
    n_cls_layers = params.get("n_cls_layers", 3)
    if head is not None:
        n_cls_layers = len(head._decoder) // 3 + 1
        if isinstance(head.input_norm, torch.nn.Identity) and getattr(module, "expr_proj", None) is None:
            state.update({f"cls_decoder.{k}": _cpu(v) for k, v in head.state_dict().items()})
        else:
            logger.info("classifier not exported: scGPT's ClsDecoder has no input normalisation / expression path")
    layer = bb.transformer_encoder.layers[0]
    args = {
        "embsize": int(bb.d_model), "nheads": int(layer.self_attn.n_heads), "d_hid": int(layer.linear1.out_features),
        "nlayers": len(bb.transformer_encoder.layers), "n_layers_cls": int(n_cls_layers),
        "dropout": float(params.get("dropout", 0.0)), "pad_token": "<pad>",
        "pad_value": cls_value if bb.input_emb_style == "continuous" else int(cls_value),
        "n_bins": int(n_bins) if n_bins else 51, "input_style": "binned" if n_bins else "log1p",
        "input_emb_style": bb.input_emb_style, "max_seq_len": params.get("max_seq_len") or 1200,
    }
    if bb.input_emb_style == "category":
        args["n_input_bins"] = int(bb.value_encoder.embedding.num_embeddings)
    torch.save(state, root / "best_model.pt")
    (root / "args.json").write_text(json.dumps(args, indent=2))
    (root / "vocab.json").write_text(json.dumps(vocab, indent=1))
    if conventions is not None:
        differ = {k: getattr(conventions, k) for k, v in _SCGPT_PIPELINE.items() if getattr(conventions, k) != v}
        if conventions.cls_value is not None and differ:
            warnings.warn(
                f"The model's conventions {differ} differ from scGPT's get_batch_cell_embeddings "
                f"({ {k: _SCGPT_PIPELINE[k] for k in differ} }): scGPT's encoder gives this model's token outputs "
                "for the same tokens, its embedding pipeline gives other cell embeddings.",
                UserWarning,
                stacklevel=3,
            )


def _write_geneformer(root: Path, bb: GeneformerBackbone, genes: np.ndarray, params: dict) -> None:
    state = {}
    for k, v in bb.state_dict().items():
        if k in ("gene_to_token", "gene_medians"):
            continue
        v = _cpu(v)
        if ".attention.self.Wqkv." in k:
            q, key, val = v.chunk(3, dim=0)
            for part, t in (("query", q), ("key", key), ("value", val)):
                state["bert." + k.replace(".Wqkv.", f".{part}.")] = t.contiguous()
        elif ".attention.self.out_proj." in k:
            state["bert." + k.replace(".attention.self.out_proj.", ".attention.output.dense.")] = v
        else:
            state["bert." + k] = v
    emb = bb.embeddings
    layer = bb.encoder.layer[0]
    config = {
        "architectures": ["BertForMaskedLM"], "model_type": "bert",
        "vocab_size": int(emb.word_embeddings.num_embeddings), "hidden_size": int(bb.d_model),
        "num_attention_heads": int(layer.attention.self.n_heads), "num_hidden_layers": len(bb.encoder.layer),
        "intermediate_size": int(layer.intermediate.dense.out_features),
        "max_position_embeddings": int(emb.position_embeddings.num_embeddings),
        "type_vocab_size": int(emb.token_type_embeddings.num_embeddings), "layer_norm_eps": float(emb.LayerNorm.eps),
        "hidden_act": bb.hidden_act, "pad_token_id": int(bb.pad_id), "position_embedding_type": "absolute",
        "hidden_dropout_prob": float(params.get("dropout", 0.02)), "attention_probs_dropout_prob": 0.02,
        "initializer_range": 0.02,
    }
    g2t = bb.gene_to_token.cpu().numpy()
    med = bb.gene_medians.cpu().numpy()
    keep = np.flatnonzero(g2t >= 0)
    tokens = {"<pad>": int(bb.pad_id)}
    if bb.special_tokens:
        tokens.update({"<cls>": int(bb.cls_id), "<eos>": int(bb.eos_id)})
    tokens.update({str(genes[i]): int(g2t[i]) for i in keep})
    medians = {str(genes[i]): float(med[i]) for i in keep}
    (root / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state, str(root / "model.safetensors"), metadata={"format": "pt"})
    for name, obj in (("token_dictionary.pkl", tokens), ("gene_median_dictionary.pkl", medians)):
        (root / name).write_bytes(pickle.dumps(obj, protocol=4))  # plain dicts: Geneformer's file format
