"""Load official scGPT and Geneformer checkpoints safely and map them onto the GenoHoption backbones.

Layouts read (nothing else is needed, nothing is executed):

- scGPT (Cui et al., Nature Methods 2024; ``bowang-lab/scGPT``, ``scgpt/model/model.py``): a directory
  with ``best_model.pt`` (a ``TransformerModel`` state dict), ``args.json`` (``embsize``, ``nheads``,
  ``d_hid``, ``nlayers``, ``n_layers_cls``, ``pad_token``, ``pad_value``, ``n_bins``, ``input_style``,
  ``input_emb_style`` …) and ``vocab.json`` (gene symbol → id, with ``<pad>``, ``<cls>``, ``<eoc>``).
  Attention weights are accepted as flash-attention ``self_attn.Wqkv.*`` or
  :class:`torch.nn.MultiheadAttention` ``self_attn.in_proj_weight`` / ``in_proj_bias`` (same
  ``[Q; K; V]`` row layout, heads contiguous).
- Geneformer (Theodoris et al., Nature 2023; Hugging Face ``ctheodoris/Geneformer``): a Hugging Face
  BERT directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) with the
  dictionaries ``token_dictionary*.pkl`` (Ensembl id → token), ``gene_median_dictionary*.pkl``
  (Ensembl id → non-zero median) and optionally ``gene_name_id_dict*.pkl`` (symbol → Ensembl id), in
  the directory or its parent. BERT's separate ``query`` / ``key`` / ``value`` weights are packed into
  the ``Wqkv`` of :class:`~genohoption.nn.GraphDiffusionAttention`, ``attention.output.dense`` becomes
  its ``out_proj``.

Safety: weights are read with :func:`torch.load` (``weights_only=True``) or safetensors; the pickled
dictionaries with :func:`genohoption._safe_pickle.safe_load_pickle` (plain data only). A file that
carries code is refused with :class:`~genohoption._safe_pickle.UnsafePickleError` and never run.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._safe_pickle import UnsafePickleError, safe_load_pickle
from ._io import META_FILE

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "GeneMapping",
    "PretrainedCheckpoint",
    "PretrainedReport",
    "UnsafePickleError",
    "load_pretrained_weights",
    "map_genes",
    "read_pretrained",
]

MIN_GENE_COVERAGE = 0.5
"""Below this fraction of genes found in the vocabulary, a :class:`UserWarning` is raised."""

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}")

# checkpoint keys that are known parts of the official models but not of the annotation backbone
_SCGPT_UNUSED = ("decoder.", "mvc_decoder.", "grad_reverse_discriminator.", "batch_encoder.", "sim.",
                 "creterion_cce.", "flag_encoder.", "pert_encoder.", "cls_decoder.")
_SCGPT_BACKBONE = ("encoder.", "value_encoder.", "transformer_encoder.", "dsbn.", "bn.")
_BERT_UNUSED = ("cls.", "pooler.", "classifier.", "embeddings.position_ids")
_BERT_BACKBONE = ("embeddings.", "encoder.")


class CheckpointError(ValueError):
    """A checkpoint does not fit the backbone (missing keys, wrong shapes, unknown backbone keys, bad config)."""


# ----------------------------------------------------------------------------- reading files
def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict with safetensors or ``torch.load(weights_only=True)``; never plain pickle."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafePickleError(
            f"{path} was refused: it carries code or objects other than tensors (torch.load with "
            f"weights_only=True said: {str(err).splitlines()[0]}). It was not executed. Use the official "
            "checkpoint, or re-save its state dict with torch.save(model.state_dict(), path)."
        ) from None
    for key in ("model_state_dict", "state_dict", "model"):  # checkpoints that wrap the state dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of parameter names to tensors).")
    return dict(obj)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {what}")
    return path


def _find_dictionary(root: Path, stem: str, required: bool) -> Path | None:
    for folder in (root, root.parent):
        hits = sorted(folder.glob(f"{stem}*.pkl"))
        if hits:
            return hits[0]
    if required:
        raise FileNotFoundError(
            f"No {stem}*.pkl in {root} or {root.parent}: copy Geneformer's {stem}.pkl (from the geneformer "
            "package or the Hugging Face repository ctheodoris/Geneformer) into the model directory."
        )
    return None


@dataclass
class PretrainedCheckpoint:
    """An official checkpoint read from disk (see :func:`read_pretrained`).

    Attributes
    ----------
    backbone
        ``"scgpt"`` or ``"geneformer"``.
    path
        The checkpoint directory.
    config
        ``args.json`` (scGPT) or ``config.json`` (Geneformer) as read.
    state_dict
        The weights, as stored (official key names).
    vocab
        Gene identifier → token id (scGPT ``vocab.json``; Geneformer ``token_dictionary.pkl``).
    gene_medians
        Geneformer only: Ensembl id → non-zero median.
    symbol_to_id
        Geneformer only, when present: gene symbol → Ensembl id.
    backbone_config
        Architecture in the arguments of :class:`~genohoption.nn.ScGPTBackbone` /
        :class:`~genohoption.nn.GeneformerBackbone` (JSON-able; saved with the model).
    """

    backbone: str
    path: Path
    config: dict
    state_dict: dict[str, torch.Tensor]
    vocab: dict[str, int]
    gene_medians: dict[str, float] | None = None
    symbol_to_id: dict[str, str] | None = None
    backbone_config: dict = field(default_factory=dict)


def read_pretrained(path: str | os.PathLike, backbone: str) -> PretrainedCheckpoint:
    """Read an official scGPT or Geneformer checkpoint directory (weights, config, vocabulary).

    Parameters
    ----------
    path
        scGPT: directory with ``best_model.pt``, ``args.json``, ``vocab.json``, or a directory written by
        :meth:`GenoHoptionModel.save <genohoption.GenoHoptionModel.save>` of a model with the scGPT-style
        backbone (e.g. pretrained with :meth:`~genohoption.GenoHoptionModel.pretrain`; its genes are the
        vocabulary, matched by name). Geneformer: Hugging Face
        BERT directory with ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``, and the
        dictionaries ``token_dictionary*.pkl``, ``gene_median_dictionary*.pkl`` (required) and
        ``gene_name_id_dict*.pkl`` (optional) there or in its parent directory.
    backbone
        ``"scgpt"`` or ``"geneformer"``.

    Returns
    -------
    :class:`PretrainedCheckpoint`.

    Raises
    ------
    FileNotFoundError
        If the directory or a required file is missing (the message names it).
    UnsafePickleError
        If the weights or a dictionary carry code; nothing is executed.
    CheckpointError
        If the configuration and the weights disagree, or a value is unsupported.
    ValueError
        For an unknown ``backbone``.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"Pretrained checkpoint directory {root} not found.")
    if backbone == "scgpt" and (root / META_FILE).is_file() and not (root / "best_model.pt").is_file():
        return _read_genohoption(root)
    if backbone == "scgpt":
        return _read_scgpt(root)
    if backbone == "geneformer":
        return _read_geneformer(root)
    raise ValueError(f"backbone={backbone!r} has no pretrained loader; use 'scgpt' or 'geneformer'.")


def _read_scgpt(root: Path) -> PretrainedCheckpoint:
    hint = "an scGPT checkpoint directory holds best_model.pt, args.json and vocab.json."
    state = _load_weights(_require(root / "best_model.pt", hint))
    args = _read_json(_require(root / "args.json", hint))
    vocab = _read_json(_require(root / "vocab.json", hint))
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise CheckpointError(f"{root / 'vocab.json'} must map gene symbols to integer ids.")
    pad_token = args.get("pad_token", "<pad>")
    for tok in (pad_token, "<cls>"):
        if tok not in vocab:
            raise CheckpointError(f"{root / 'vocab.json'} lacks the special token {tok!r}.")
    emb = state.get("encoder.embedding.weight")
    if emb is None:
        raise CheckpointError(f"{root / 'best_model.pt'} lacks 'encoder.embedding.weight': not an scGPT TransformerModel.")
    n_tokens, d_model = emb.shape
    if max(vocab.values()) >= n_tokens:
        raise CheckpointError(
            f"vocab.json has ids up to {max(vocab.values())} but the gene embedding has {n_tokens} rows: "
            "the vocabulary does not belong to these weights."
        )
    layers = {int(m.group(1)) for k in state if (m := re.match(r"transformer_encoder\.layers\.(\d+)\.", k))}
    n_layers = len(layers)
    if "nheads" not in args:
        raise CheckpointError(f"{root / 'args.json'} lacks 'nheads' (number of attention heads).")
    lin1 = state.get("transformer_encoder.layers.0.linear1.weight")
    d_hid = int(lin1.shape[0]) if lin1 is not None else int(args.get("d_hid", 0))
    for name, value in (("embsize", d_model), ("nlayers", n_layers), ("d_hid", d_hid)):
        if name in args and int(args[name]) != value:
            raise CheckpointError(
                f"args.json says {name}={args[name]} but best_model.pt has {value}: the files do not belong together."
            )
    if d_model % int(args["nheads"]):
        raise CheckpointError(f"embsize={d_model} is not divisible by nheads={args['nheads']}.")
    if "value_encoder.embedding.weight" in state:
        input_emb_style, n_input_bins = "category", int(state["value_encoder.embedding.weight"].shape[0])
    else:
        input_emb_style, n_input_bins = "continuous", None
    if args.get("input_emb_style", input_emb_style) != input_emb_style:
        raise CheckpointError(
            f"args.json says input_emb_style={args['input_emb_style']!r} but the weights hold a "
            f"{input_emb_style!r} value encoder."
        )
    input_style = args.get("input_style", "binned")
    if input_style not in ("binned", "log1p", "normed_raw"):
        raise CheckpointError(f"input_style={input_style!r} in args.json is not supported.")
    config = {
        "d_model": int(d_model), "n_heads": int(args["nheads"]), "n_layers": n_layers, "d_hid": d_hid,
        "n_tokens": int(n_tokens), "cls_id": int(vocab["<cls>"]), "pad_id": int(vocab[pad_token]),
        "input_emb_style": input_emb_style, "n_input_bins": n_input_bins,
        "pad_value": float(args.get("pad_value", -2)),
        "n_bins": int(args.get("n_bins", 51)) if input_style == "binned" else None,
        "n_cls_layers": int(args.get("n_layers_cls", 3)), "source": str(root),
    }
    return PretrainedCheckpoint("scgpt", root, args, state, vocab, backbone_config=config)


def _read_genohoption(root: Path) -> PretrainedCheckpoint:
    """Read a directory written by ``GenoHoptionModel.save``: its backbone, in scGPT's key names."""
    from ._io import load_model_files

    state, meta = load_model_files(root)
    params = {**meta["init_params"]["non_kwargs"], **meta["init_params"]["kwargs"]}
    if params.get("backbone", "scgpt") != "scgpt":
        raise CheckpointError(f"{root} holds a {params['backbone']!r} backbone; pass backbone={params['backbone']!r}.")
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    emb = backbone.get("encoder.embedding.weight")
    if emb is None:
        raise CheckpointError(f"{root} holds no scGPT-style backbone (no backbone.encoder.embedding.weight).")
    genes = np.asarray(meta["registry"]["field_registries"]["X"]["state_registry"]["column_names"], dtype=str)
    config = dict(params.get("backbone_config") or {})
    g2t = backbone.pop("gene_to_token", None)
    if g2t is None:  # a vocabulary of its own: genes 0 … n-1, <cls> = n, <pad> = n + 1
        vocab = {g: i for i, g in enumerate(genes)}
        cls_id, pad_id = len(genes), len(genes) + 1
    else:
        vocab = {g: int(t) for g, t in zip(genes, g2t.tolist(), strict=True) if t >= 0}
        cls_id, pad_id = int(config["cls_id"]), int(config["pad_id"])
    vocab.update({"<cls>": cls_id, "<pad>": pad_id})
    layers = {int(m.group(1)) for k in backbone if (m := re.match(r"transformer_encoder\.layers\.(\d+)\.", k))}
    value_bins = backbone.get("value_encoder.embedding.weight")
    backbone_config = {
        "d_model": int(emb.shape[1]), "n_heads": int(config.get("n_heads", params["n_heads"])),
        "n_layers": len(layers), "d_hid": int(backbone["transformer_encoder.layers.0.linear1.weight"].shape[0]),
        "n_tokens": int(emb.shape[0]), "cls_id": cls_id, "pad_id": pad_id,
        "input_emb_style": "category" if value_bins is not None else "continuous",
        "n_input_bins": int(value_bins.shape[0]) if value_bins is not None else None,
        "pad_value": float(config.get("pad_value", 0.0)), "n_bins": config.get("n_bins"),
        "n_cls_layers": int(config.get("n_cls_layers", params.get("n_cls_layers", 3))), "source": str(root),
        "format": "genohoption", "conventions": params.get("conventions"),
    }
    return PretrainedCheckpoint("scgpt", root, {"format": "genohoption", **params}, backbone, vocab,
                                backbone_config=backbone_config)


def _read_geneformer(root: Path) -> PretrainedCheckpoint:
    cfg = _read_json(_require(root / "config.json", "a Hugging Face BERT directory holds config.json."))
    if (root / "model.safetensors").is_file():
        state = _load_weights(root / "model.safetensors")
    elif (root / "pytorch_model.bin").is_file():
        state = _load_weights(root / "pytorch_model.bin")
    else:
        raise FileNotFoundError(f"Neither model.safetensors nor pytorch_model.bin in {root}.")
    if cfg.get("model_type", "bert") != "bert":
        raise CheckpointError(f"config.json has model_type={cfg['model_type']!r}; only BERT (Geneformer) is supported.")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError("Only absolute position embeddings are supported (config.json position_embedding_type).")
    missing = [k for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                           "vocab_size", "max_position_embeddings") if k not in cfg]
    if missing:
        raise CheckpointError(f"config.json lacks {missing}.")
    tokens = safe_load_pickle(_find_dictionary(root, "token_dictionary", True))
    medians = safe_load_pickle(_find_dictionary(root, "gene_median_dictionary", True))
    names_path = _find_dictionary(root, "gene_name_id_dict", False)
    names = safe_load_pickle(names_path) if names_path is not None else None
    for what, obj in (("token dictionary", tokens), ("gene median dictionary", medians), ("gene name dictionary", names)):
        if obj is not None and not isinstance(obj, dict):
            raise CheckpointError(f"The {what} must be a dict, got {type(obj).__name__}.")
    if "<pad>" not in tokens:
        raise CheckpointError("The token dictionary lacks '<pad>'.")
    if max(tokens.values()) >= int(cfg["vocab_size"]):
        raise CheckpointError(
            f"The token dictionary has ids up to {max(tokens.values())} but config.json vocab_size is "
            f"{cfg['vocab_size']}: the dictionary does not belong to this model."
        )
    special = "<cls>" in tokens and "<eos>" in tokens
    config = {
        "vocab_size": int(cfg["vocab_size"]), "hidden_size": int(cfg["hidden_size"]),
        "num_attention_heads": int(cfg["num_attention_heads"]), "num_hidden_layers": int(cfg["num_hidden_layers"]),
        "intermediate_size": int(cfg["intermediate_size"]),
        "max_position_embeddings": int(cfg["max_position_embeddings"]),
        "type_vocab_size": int(cfg.get("type_vocab_size", 2)), "layer_norm_eps": float(cfg.get("layer_norm_eps", 1e-12)),
        "hidden_act": str(cfg.get("hidden_act", "gelu")), "pad_token_id": int(tokens["<pad>"]),
        "cls_token_id": int(tokens["<cls>"]) if special else None,
        "eos_token_id": int(tokens["<eos>"]) if special else None,
        "source": str(root),
    }
    return PretrainedCheckpoint("geneformer", root, cfg, state, tokens, medians, names, backbone_config=config)


# ----------------------------------------------------------------------------- genes
@dataclass
class GeneMapping:
    """How the data's genes map onto a pretrained vocabulary.

    Attributes
    ----------
    gene_to_token
        ``(n_vars,)`` int64 token id per gene, ``-1`` where unmatched (dropped from the sequences).
    gene_medians
        ``(n_vars,)`` float64 Geneformer medians (``NaN`` where unmatched); ``None`` for scGPT.
    n_matched, n_genes
        Genes found / genes in the data.
    id_type
        ``"symbol"`` or ``"ensembl"``: what the identifiers were read as.
    """

    gene_to_token: np.ndarray
    gene_medians: np.ndarray | None
    n_matched: int
    n_genes: int
    id_type: str


def _looks_ensembl(ids: Sequence[str]) -> bool:
    return np.mean([bool(_ENSEMBL.match(str(g))) for g in ids]) > 0.5 if len(ids) else False


def map_genes(identifiers: Sequence[str], checkpoint: PretrainedCheckpoint, *, source: str = "var_names") -> GeneMapping:
    """Match gene identifiers to the checkpoint's vocabulary.

    scGPT matches gene symbols against ``vocab.json``. Geneformer matches Ensembl ids (version suffix
    ``.N`` ignored) against the token dictionary; identifiers that look like symbols are first
    translated with ``gene_name_id_dict.pkl``; a Geneformer gene also needs a median. Logs the number
    matched; warns below :data:`MIN_GENE_COVERAGE`.

    Parameters
    ----------
    identifiers
        ``(n_vars,)`` gene identifiers, in the data's gene order.
    checkpoint
        From :func:`read_pretrained`.
    source
        Where the identifiers came from, for messages (``"var_names"`` or ``"var['…']"``).

    Returns
    -------
    :class:`GeneMapping`.

    Raises
    ------
    ValueError
        If no gene matches (the message says whether symbols or Ensembl ids are expected and how to pass
        them).
    """
    ids = [str(g) for g in identifiers]
    ensembl = _looks_ensembl(ids)
    medians = None
    if checkpoint.backbone == "scgpt":
        vocab = {k: v for k, v in checkpoint.vocab.items() if not k.startswith("<")}
        g2t = np.array([vocab.get(g, -1) for g in ids], dtype=np.int64)
        id_type = "symbol"
        fix = (
            f"{source} look like Ensembl ids but the scGPT vocabulary holds gene symbols: pass "
            "gene_symbols='<column of adata.var with symbols>'"
            if ensembl else f"scGPT needs human gene symbols (e.g. 'CD3E') in {source} or in gene_symbols=..."
        )
    else:
        id_type = "ensembl" if ensembl else "symbol"
        if ensembl:
            ens = [g.split(".")[0] for g in ids]
        elif checkpoint.symbol_to_id is not None:
            ens = [checkpoint.symbol_to_id.get(g, "") for g in ids]
        else:
            raise ValueError(
                f"Geneformer needs Ensembl ids, {source} look like gene symbols and no gene_name_id_dict.pkl "
                f"was found in {checkpoint.path}: add that dictionary, or pass gene_symbols='<column of "
                "adata.var with Ensembl ids>'."
            )
        tok, med = checkpoint.vocab, checkpoint.gene_medians or {}
        g2t = np.array([tok.get(e, -1) if e in med else -1 for e in ens], dtype=np.int64)
        medians = np.array([float(med[e]) if t >= 0 else np.nan for e, t in zip(ens, g2t, strict=True)],
                           dtype=np.float64)
        fix = (
            f"Geneformer needs Ensembl ids (e.g. 'ENSG00000167286'); {source} were read as "
            f"{'Ensembl ids' if ensembl else 'gene symbols'}. Pass gene_symbols='<column of adata.var with "
            "Ensembl ids or symbols>' if another column holds them."
        )
    n_matched = int((g2t >= 0).sum())
    logger.info("pretrained %s vocabulary: %d of %d genes matched (%s)", checkpoint.backbone, n_matched, len(ids), id_type)
    if n_matched == 0:
        raise ValueError(f"None of the {len(ids)} genes is in the {checkpoint.backbone} vocabulary. {fix}.")
    if n_matched < MIN_GENE_COVERAGE * len(ids):
        warnings.warn(
            f"Only {n_matched} of {len(ids)} genes ({n_matched / len(ids):.0%}) are in the {checkpoint.backbone} "
            f"vocabulary; the others are dropped from the token sequences. {fix}.",
            UserWarning,
            stacklevel=3,
        )
    return GeneMapping(g2t, medians, n_matched, len(ids), id_type)


# ----------------------------------------------------------------------------- weights
@dataclass
class PretrainedReport:
    """What :func:`load_pretrained_weights` did, tensor by tensor.

    Every checkpoint tensor and every module tensor is in exactly one list. Checkpoint tensors (official key names; BERT's separate query / key / value are one entry
    ``…attention.self.{query,key,value}.weight``): :attr:`matched` or :attr:`unexpected`, or a head key
    in :attr:`shape_mismatches`. Module tensors (the module's key names): loaded from a matched key, or
    in :attr:`missing` (initialised fresh) or :attr:`from_data` (set from the data and the vocabulary).

    Attributes
    ----------
    backbone, source
        Backbone kind and checkpoint directory.
    matched
        Checkpoint keys loaded into the model.
    missing
        Module tensors the checkpoint did not provide, left at their initialisation: task heads (e.g.
        ``cls_decoder.*`` of a new classifier, its input normalisation), the expression projection
        ``expr_proj.weight`` of ``cell_emb="cls+expr"``. A missing backbone tensor is an error instead.
    from_data
        Module buffers set from the data, not from the checkpoint: the gene graph (``graph_indptr``,
        ``graph_indices``), the gene-to-vocabulary map (``backbone.gene_to_token``, Geneformer's
        ``backbone.gene_medians``) and other data-derived buffers of the task.
    unexpected
        Checkpoint keys the model does not use (e.g. scGPT's ``decoder.*``, ``mvc_decoder.*``,
        ``flag_encoder.weight``, BERT's MLM head ``cls.predictions.*``).
    shape_mismatches
        ``(key, checkpoint shape, model shape)`` of head keys that were skipped and re-initialised (e.g. a
        classifier with another number of classes); the module tensors are in :attr:`missing` too.
    n_genes_matched, n_genes, gene_id_type
        Gene-vocabulary coverage (see :class:`GeneMapping`).
    """

    backbone: str
    source: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatches: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    from_data: list[str] = field(default_factory=list)
    n_genes_matched: int = 0
    n_genes: int = 0
    gene_id_type: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (JSON-able)."""
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"{self.backbone} checkpoint {self.source}",
            f"  genes matched: {self.n_genes_matched} / {self.n_genes} ({self.gene_id_type})",
            f"  matched keys: {len(self.matched)}",
            f"  unexpected (unused): {len(self.unexpected)} {self.unexpected[:6]}",
            f"  shape mismatches (re-initialised): {self.shape_mismatches}",
            f"  missing (initialised fresh): {len(self.missing)} {self.missing}",
            f"  from the data: {self.from_data}",
        ]
        return "\n".join(lines)


def _scgpt_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Official scGPT keys → module keys; returns (mapped backbone keys, other keys, unknown keys in the backbone)."""
    mapped, unused, foreign = {}, [], []
    for key, value in state.items():
        new = key.replace(".self_attn.in_proj_weight", ".self_attn.Wqkv.weight").replace(
            ".self_attn.in_proj_bias", ".self_attn.Wqkv.bias"
        )
        if new.startswith(("encoder.", "value_encoder.", "transformer_encoder.")):
            mapped[f"backbone.{new}"] = value
        elif new.startswith(_SCGPT_BACKBONE):
            foreign.append(key)
        else:
            unused.append(key)
    return mapped, unused, foreign


def _bert_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Hugging Face BERT keys → module keys, packing query/key/value into ``Wqkv``."""
    mapped, unused, foreign, qkv = {}, [], [], {}
    for key, value in state.items():
        k = key.removeprefix("bert.")
        m = re.match(r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$", k)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = (key, value)
            continue
        k = re.sub(r"(encoder\.layer\.\d+\.attention)\.output\.dense\.", r"\1.self.out_proj.", k)
        if k.startswith(_BERT_UNUSED) or key.startswith(_BERT_UNUSED):
            unused.append(key)
        elif k.startswith(_BERT_BACKBONE):
            mapped[f"backbone.{k}"] = value
        else:
            unused.append(key)
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            foreign += [name for name, _ in parts.values()]  # incomplete triple: report, key goes missing
            continue
        mapped[f"backbone.encoder.layer.{layer}.attention.self.Wqkv.{kind}"] = torch.cat(
            [parts[p][1] for p in ("query", "key", "value")]
        )
    return mapped, unused, foreign


def _mapped_source(key: str, backbone: str) -> str:
    """Model key → the official key name it came from (for reports)."""
    k = key.removeprefix("backbone.")
    if backbone == "geneformer":
        k = re.sub(r"\.attention\.self\.out_proj\.", ".attention.output.dense.", k)
        k = re.sub(r"\.attention\.self\.Wqkv\.", ".attention.self.{query,key,value}.", k)
        return f"bert.{k}" if key.startswith("backbone.") else k
    return k


def load_pretrained_weights(module: nn.Module, checkpoint: PretrainedCheckpoint, genes: GeneMapping, *,
                            heads: Sequence[str] = ("cls_decoder.",)) -> PretrainedReport:
    """Copy a checkpoint's weights into a task module's backbone, strictly, and its heads where they fit.

    Every backbone parameter of ``module`` (an :class:`~genohoption.module.AnnotationModule` or a
    :class:`~genohoption.module.PerturbationModule`) must come from the checkpoint with the same shape; the
    gene-vocabulary buffers are set from ``genes``; a checkpoint key under one of ``heads`` (scGPT key
    names, e.g. the classifier ``cls_decoder.``) is loaded into the module tensor of the same name where
    the shapes agree and reported otherwise. The report accounts for every tensor of both sides (see
    :class:`PretrainedReport`).

    Parameters
    ----------
    module
        Module whose ``backbone`` was built from ``checkpoint.backbone_config``.
    checkpoint
        From :func:`read_pretrained`.
    genes
        From :func:`map_genes`.
    heads
        Key prefixes of the task heads to load where they fit (default: scGPT's classifier).

    Returns
    -------
    :class:`PretrainedReport`.

    Raises
    ------
    CheckpointError
        Backbone keys missing from the checkpoint, shape mismatches in the backbone, or checkpoint keys
        in the backbone's namespace that the backbone does not have (e.g. extra layers, batch
        normalisation); the message names them all.
    """
    mapper = _scgpt_keys if checkpoint.backbone == "scgpt" else _bert_keys
    mapped, unused, foreign = mapper(checkpoint.state_dict)
    target = module.state_dict()
    vocab_buffers = {"backbone.gene_to_token": torch.from_numpy(genes.gene_to_token)}
    if genes.gene_medians is not None:
        vocab_buffers["backbone.gene_medians"] = torch.from_numpy(genes.gene_medians)
    report = PretrainedReport(checkpoint.backbone, str(checkpoint.path), n_genes_matched=genes.n_matched,
                              n_genes=genes.n_genes, gene_id_type=genes.id_type)
    required = [k for k in target if k.startswith("backbone.") and k not in vocab_buffers]
    missing = [k for k in required if k not in mapped]
    bad_shape = [(k, tuple(mapped[k].shape), tuple(target[k].shape)) for k in required
                 if k in mapped and mapped[k].shape != target[k].shape]
    foreign += [_mapped_source(k, checkpoint.backbone) for k in mapped if k.startswith("backbone.") and k not in target]
    if missing or bad_shape or foreign:
        parts = []
        if missing:
            parts.append(f"missing backbone keys {[_mapped_source(k, checkpoint.backbone) for k in missing]}")
        if bad_shape:
            parts.append("shape mismatches (key, checkpoint, model) "
                         f"{[(_mapped_source(k, checkpoint.backbone), a, b) for k, a, b in bad_shape]}")
        if foreign:
            parts.append(f"unknown keys in the backbone {sorted(foreign)}")
        raise CheckpointError(
            f"The {checkpoint.backbone} checkpoint in {checkpoint.path} does not fit the backbone built from its "
            f"configuration: {'; '.join(parts)}. Check that the weights and the configuration file belong "
            "together and come from the official model."
        )
    load = {k: mapped[k].to(target[k].dtype) for k in required}
    for k, v in vocab_buffers.items():
        load[k] = v.to(target[k].dtype)
    heads = tuple(heads)
    loaded_heads, skipped = [], []
    for k in unused:
        if not (heads and k.startswith(heads)) or k not in target:
            skipped.append(k)
        elif checkpoint.state_dict[k].shape == target[k].shape:
            load[k] = checkpoint.state_dict[k].to(target[k].dtype)
            loaded_heads.append(k)
        else:
            report.shape_mismatches.append((k, tuple(checkpoint.state_dict[k].shape), tuple(target[k].shape)))
    result = module.load_state_dict(load, strict=False)
    if result.unexpected_keys:  # cannot happen: keys are built from the target
        raise RuntimeError(f"unexpected keys {result.unexpected_keys}")
    report.matched = sorted({_mapped_source(k, checkpoint.backbone) for k in required} | set(loaded_heads))
    report.unexpected = sorted(skipped)
    buffers = {name for name, _ in module.named_buffers()}
    rest = [k for k in target if k not in load]
    report.from_data = sorted([*vocab_buffers, *(k for k in rest if k in buffers and not (heads and k.startswith(heads)))])
    report.missing = sorted(k for k in rest if k not in report.from_data)
    unknown = [k for k in skipped if not k.removeprefix("bert.").startswith(_SCGPT_UNUSED + _BERT_UNUSED)]
    if unknown:
        warnings.warn(
            f"{len(unknown)} checkpoint keys are not part of the {checkpoint.backbone} architecture known here and "
            f"were not loaded: {unknown[:8]}. The backbone itself loaded completely.",
            UserWarning,
            stacklevel=3,
        )
    logger.info("%s", report)
    return report
