"""Backbone construction, per-backbone tokenization and cell embedding for the modules (scGPT and Geneformer).

The input and read-out conventions of each original pipeline are :class:`Conventions`; a loaded
checkpoint gets those of its original pipeline (:func:`resolve_conventions`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._constants import BACKBONES
from ..data import TokenRandom, Tokens, bin_values, rank_value_encode, tokenize
from ..nn import BatchGraph, GeneformerBackbone, ScGPTBackbone, induced_batch_graph

BIN_TIES = ("random", "top")
SAMPLINGS = ("random", "top")
EMB_MODES = ("cls", "cell")
EMB_NORMS = ("l2", None)
_SCGPT_ONLY = ("cls_value", "n_bins", "bin_ties", "sampling")


@dataclass(frozen=True)
class Conventions:
    """How cells become tokens and how the cell embedding is read out (``GenoHoptionModel(conventions=...)``).

    The defaults of a loaded checkpoint are those of its original pipeline, as that pipeline's code does
    them (scGPT 0.2.4's ``get_batch_cell_embeddings`` / ``DataCollator`` / ``binning``; Geneformer's
    ``TranscriptomeTokenizer`` and ``EmbExtractor``), see :func:`resolve_conventions`.

    Attributes
    ----------
    cls_value
        scGPT: expression value fed with the ``<cls>`` token. scGPT's code gives it its ``pad_value``
        (``args.json``; -2, or the padding bin of a category value encoder) in pretraining and in
        ``get_batch_cell_embeddings``. ``None`` for Geneformer (no values).
    n_bins
        scGPT: per-cell quantile bins of the values (``n_bins`` of ``args.json``, 51; scGPT's collator
        always uses 51); ``None``: the values as registered. Fixed by a checkpoint.
    bin_ties
        scGPT, with ``n_bins``: a value equal to several (tied) bin edges goes to a bin of the tie drawn
        at random (``"random"``, scGPT's ``_digitize(side="both")``) or to the top bin of the tie
        (``"top"``, :func:`numpy.digitize`). In training the draws come from torch's generator (seeded
        every epoch); at inference from :class:`~genohoption.data.TokenRandom` seeded with ``seed``.
    sampling
        scGPT: which genes a cell with more expressed genes than ``max_seq_len - 1`` keeps at inference:
        a random subset (``"random"``, scGPT's ``DataCollator(sampling=True)``, drawn as scGPT draws it
        from ``seed``) or its most expressed genes (``"top"``). Training always keeps a random subset.
    emb_layer
        Layer whose outputs give the cell embedding of
        :meth:`~genohoption.GenoHoptionModel.get_latent_representation`: ``0`` the last layer, ``-1``
        the one before (Geneformer's ``EmbExtractor`` meaning and default). The classifier always reads
        the last layer.
    emb_mode
        ``"cls"``: the ``<cls>`` token's output (scGPT; Geneformer V2); ``"cell"``: the mean of the gene
        tokens' outputs (Geneformer's ``mean_nonpadding_embs``; V1 has no ``<cls>``). Used by the
        classifier too.
    emb_norm
        ``"l2"``: the latent cell embedding is divided by its Euclidean norm (scGPT's
        ``get_batch_cell_embeddings``); ``None``: as is (Geneformer). The classifier reads it unnormalised.
    seed
        Seed of the random draws at inference (``bin_ties="random"``, ``sampling="random"``): each pass
        over the cells (``predict``, ``get_latent_representation``) starts from it, so repeated calls give
        the same result, whatever the minibatch size.
    """

    cls_value: float | None = None
    n_bins: int | None = None
    bin_ties: str | None = None
    sampling: str | None = None
    emb_layer: int = 0
    emb_mode: str = "cls"
    emb_norm: str | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        """Plain-data copy (JSON-able)."""
        return asdict(self)


CONVENTION_KEYS = tuple(Conventions.__dataclass_fields__)
"""Names of the conventions (keys of ``GenoHoptionModel(conventions=...)``)."""


def checkpoint_kind(config: Mapping | None) -> str:
    """``"scratch"`` (no checkpoint), ``"genohoption"`` (a backbone pretrained here) or ``"original"``."""
    if not config:
        return "scratch"
    return "genohoption" if config.get("format") == "genohoption" else "original"


def default_conventions(backbone: str, config: Mapping | None, seed: int = 0) -> dict:
    """Return the conventions a model gets when ``conventions=`` is not given (see :func:`resolve_conventions`)."""
    kind = checkpoint_kind(config)
    if kind == "genohoption" and config.get("conventions"):
        return {**config["conventions"], "seed": int(seed)}
    if backbone == "geneformer":
        if kind == "original":  # EmbExtractor: second-to-last layer; V1 mean of genes, V2 <cls>
            mode = "cls" if config.get("cls_token_id") is not None else "cell"
            return Conventions(emb_layer=-1, emb_mode=mode, seed=int(seed)).to_dict()
        return Conventions(emb_layer=0, emb_mode="cell", seed=int(seed)).to_dict()
    if kind == "original":  # scGPT's get_batch_cell_embeddings
        return Conventions(cls_value=float(config.get("pad_value", -2.0)), n_bins=config.get("n_bins"),
                           bin_ties="random", sampling="random", emb_layer=0, emb_mode="cls", emb_norm="l2",
                           seed=int(seed)).to_dict()
    return dict(SCRATCH_SCGPT, seed=int(seed))


SCRATCH_SCGPT = Conventions(cls_value=0.0, n_bins=None, bin_ties="random", sampling="top", emb_layer=0,
                            emb_mode="cls", emb_norm=None).to_dict()
"""Conventions of an scGPT-style model trained from scratch: ``<cls>`` value 0, values as registered (no
binning), the most expressed genes above ``max_seq_len``, the last layer's ``<cls>`` output, not normalised."""


def resolve_conventions(backbone: str, config: Mapping | None, given: Mapping | None, *,
                        seed: int | None = 0) -> dict:
    """Return the complete, checked conventions of a model: the defaults, updated with ``given``.

    Defaults: a loaded official checkpoint gets its original pipeline's conventions (scGPT: ``<cls>``
    value = ``pad_value``, ``n_bins`` from ``args.json`` with ties at random, random gene subset above the
    length cap, ``<cls>`` embedding of the last layer, L2-normalised; Geneformer: second-to-last layer,
    mean of the gene tokens for V1 and ``<cls>`` for V2, not normalised); a backbone pretrained with this
    package keeps the conventions it was trained with; a model trained from scratch gets
    :data:`SCRATCH_SCGPT` (scGPT-style) or the last layer's mean of gene tokens (Geneformer-style).

    Parameters
    ----------
    backbone
        ``"scgpt"`` or ``"geneformer"``.
    config
        The checkpoint's architecture (``backbone_config``), ``None`` from scratch.
    given
        Conventions to set (any of :data:`CONVENTION_KEYS`), or ``None``.
    seed
        Default of ``seed`` (the model passes ``scvi.settings.seed``; ``None``, its value when unset: 0).

    Returns
    -------
    A dict with every key of :data:`CONVENTION_KEYS` (JSON-able; saved with the model).

    Raises
    ------
    ValueError
        For an unknown key or value, an scGPT-only convention set for a Geneformer backbone, a change of
        ``n_bins`` of an official checkpoint, ``emb_mode="cls"`` without a ``<cls>`` token, or a
        ``cls_value`` that is not a bin of a category value encoder.
    TypeError
        If ``given`` is not a mapping.
    """
    if given is not None and not isinstance(given, Mapping):
        raise TypeError(f"conventions must be a dict of {CONVENTION_KEYS}, got {type(given).__name__}.")
    given = dict(given or {})
    unknown = sorted(set(given) - set(CONVENTION_KEYS))
    if unknown:
        raise ValueError(f"Unknown conventions {unknown}; known: {list(CONVENTION_KEYS)}.")
    out = default_conventions(backbone, config, 0 if seed is None else seed)  # scvi.settings.seed is None unset
    if backbone == "geneformer":
        set_here = [k for k in _SCGPT_ONLY if given.get(k) is not None]
        if set_here:
            raise ValueError(f"Conventions {set_here} apply to the scGPT backbone (Geneformer has no values and "
                             "keeps its top-ranked genes); drop them.")
    if checkpoint_kind(config) == "original" and "n_bins" in given and given["n_bins"] != out["n_bins"]:
        raise ValueError(f"n_bins={given['n_bins']!r}: the checkpoint was trained with n_bins={out['n_bins']!r} "
                         "(args.json); drop n_bins from conventions.")
    out.update(given)
    _check_conventions(out, backbone, config)
    if out["cls_value"] is not None:
        out["cls_value"] = float(out["cls_value"])
    out["seed"] = int(out["seed"])
    return out


def _check_conventions(c: dict, backbone: str, config: Mapping | None) -> None:
    def bad(key, allowed):
        return ValueError(f"conventions[{key!r}]={c[key]!r} is not allowed; use one of {allowed}.")

    if c["emb_layer"] not in (0, -1) or isinstance(c["emb_layer"], bool):
        raise bad("emb_layer", (0, -1))
    if c["emb_mode"] not in EMB_MODES:
        raise bad("emb_mode", EMB_MODES)
    if c["emb_norm"] not in EMB_NORMS:
        raise bad("emb_norm", EMB_NORMS)
    if isinstance(c["seed"], bool) or not isinstance(c["seed"], int):
        raise bad("seed", "integers")
    if backbone == "geneformer":
        special = config is not None and config.get("cls_token_id") is not None
        if c["emb_mode"] == "cls" and not special:
            raise ValueError("conventions['emb_mode']='cls' needs a <cls> token (Geneformer V2 checkpoints); "
                             "this Geneformer backbone has none: use 'cell'.")
        return
    if c["bin_ties"] not in BIN_TIES:
        raise bad("bin_ties", BIN_TIES)
    if c["sampling"] not in SAMPLINGS:
        raise bad("sampling", SAMPLINGS)
    if c["n_bins"] is not None and (isinstance(c["n_bins"], bool) or not isinstance(c["n_bins"], int)
                                    or c["n_bins"] < 3):
        raise bad("n_bins", "None or an integer of at least 3")
    cls_value = c["cls_value"]
    if cls_value is None or isinstance(cls_value, bool) or not isinstance(cls_value, int | float):
        raise bad("cls_value", "numbers")
    if config and config.get("input_emb_style") == "category":
        n_input_bins = int(config["n_input_bins"])
        if not (float(cls_value).is_integer() and 0 <= cls_value < n_input_bins):
            raise ValueError(f"conventions['cls_value']={cls_value!r}: this checkpoint encodes values as bins "
                             f"0 … {n_input_bins - 1}; give one of them (scGPT: its pad_value).")

# ScGPTBackbone / GeneformerBackbone arguments that a pretrained checkpoint fixes (see model._pretrained)
_SCGPT_ARCH = ("d_model", "n_heads", "n_layers", "d_hid", "n_tokens", "cls_id", "pad_id", "input_emb_style",
               "n_input_bins", "pad_value")
_GENEFORMER_ARCH = ("vocab_size", "hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                    "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_act", "pad_token_id",
                    "cls_token_id", "eos_token_id")
_ATTENTION_ARGS = ("attention", "n_hops", "alpha", "t", "normalize")


def build_backbone(n_genes: int, backbone: str, config: dict | None, kwargs: dict) -> nn.Module:
    """Build the backbone module.

    Parameters
    ----------
    n_genes
        Number of genes (``n_vars``).
    backbone
        ``"scgpt"`` or ``"geneformer"``.
    config
        Architecture of a pretrained checkpoint (:attr:`~genohoption.model.PretrainedCheckpoint.backbone_config`);
        ``None`` for a model trained from scratch, sized by ``kwargs``. The vocabulary buffers
        (``gene_to_token``, ``gene_medians``) are placeholders until the pretrained weights or a saved
        state are loaded.
    kwargs
        ``d_model``, ``n_heads``, ``n_layers``, ``d_hid``, ``dropout`` and the attention arguments.

    Raises
    ------
    ValueError
        For an unknown ``backbone``.
    """
    attn = {k: kwargs[k] for k in _ATTENTION_ARGS if k in kwargs}
    dropout = kwargs.get("dropout", 0.1)
    if backbone == "scgpt":
        if config is None:
            return ScGPTBackbone(n_genes, **{k: v for k, v in kwargs.items() if k != "max_seq_len"})
        arch = {k: config[k] for k in _SCGPT_ARCH}
        return ScGPTBackbone(n_genes, dropout=dropout, gene_to_token=torch.full((n_genes,), -1), **arch, **attn)
    if backbone == "geneformer":
        if config is None:  # from scratch: own vocabulary (<pad> = 0, genes 1…n), plain normalised ranks
            config = {
                "vocab_size": n_genes + 1, "hidden_size": kwargs.get("d_model", 64),
                "num_attention_heads": kwargs.get("n_heads", 4), "num_hidden_layers": kwargs.get("n_layers", 2),
                "intermediate_size": kwargs.get("d_hid", 128),
                "max_position_embeddings": kwargs.get("max_seq_len") or n_genes + 2,
                "type_vocab_size": 1, "layer_norm_eps": 1e-12, "hidden_act": "relu", "pad_token_id": 0,
                "cls_token_id": None, "eos_token_id": None,
            }
            g2t, medians = torch.arange(1, n_genes + 1), torch.ones(n_genes)
        else:
            g2t, medians = torch.full((n_genes,), -1), torch.full((n_genes,), float("nan"))
        arch = {k: config[k] for k in _GENEFORMER_ARCH}
        return GeneformerBackbone(g2t, medians, dropout=dropout, **arch, **attn)
    raise ValueError(f"backbone={backbone!r} is not available; use one of {BACKBONES}.")


def backbone_tokens(
    backbone: nn.Module,
    x: torch.Tensor,
    max_seq_len: int | None,
    *,
    sample: bool,
    n_bins: int | None = None,
    include_zero: bool = False,
    conventions: Conventions | None = None,
    rng: TokenRandom | None = None,
) -> Tokens:
    """Tokenize ``(B, n_genes)`` expression rows the way the backbone was trained.

    scGPT: the cell's expressed genes that are in the vocabulary (``include_zero=True``: every gene of
    the vocabulary, expressed or not, scGPT's ``include_zero_gene="all"``), CLS first
    (:func:`~genohoption.data.tokenize`), values binned per cell when ``n_bins`` is given
    (:func:`~genohoption.data.bin_values`, scGPT ``input_style="binned"``). Geneformer: rank-value
    encoding (:func:`~genohoption.data.rank_value_encode`) truncated to ``min(max_seq_len, max_position_embeddings)``
    (``max_seq_len=None``: every expressed gene for scGPT, ``max_position_embeddings`` for Geneformer).

    With ``conventions`` (scGPT), its ``n_bins`` replaces the argument, ties are binned and a long cell's
    genes chosen as it says, and the ``<cls>`` token gets ``cls_value``; the random draws of inference
    (``sample=False``) come from ``rng`` (a new :class:`~genohoption.data.TokenRandom` seeded with
    ``conventions.seed`` when ``None``), those of training (``sample=True``) from torch's generator.
    Without ``conventions``: ties to the top bin, the most expressed genes at inference, ``<cls>`` value 0.
    """
    if isinstance(backbone, GeneformerBackbone):
        if include_zero:
            raise ValueError(
                "Geneformer ranks the genes a cell expresses: every gene as a token (gene_tokens='all') applies "
                "to the scGPT backbone only."
            )
        special = backbone.special_tokens
        length = backbone.max_len if max_seq_len is None else min(max_seq_len, backbone.max_len)
        return rank_value_encode(x, backbone.gene_medians, length,
                                 cls_token=special, eos_token=special)
    in_vocab = None
    if backbone.gene_to_token is not None:
        in_vocab = backbone.gene_to_token >= 0
        x = x * in_vocab.to(x.dtype)
    c = conventions
    if c is not None:
        n_bins = c.n_bins
        if not sample and rng is None and (c.sampling == "random" or (n_bins and c.bin_ties == "random")):
            rng = TokenRandom(c.seed)
    score = None
    if c is not None and not sample and c.sampling == "random" and max_seq_len is not None:
        keep = torch.ones_like(x, dtype=torch.bool) if include_zero else x > 0
        if in_vocab is not None and include_zero:
            keep = keep & in_vocab
        score = rng.subset_score(keep, max_seq_len - 1)
    tokens = tokenize(x, max_seq_len, cls_token=True, sample=sample, include_zero=include_zero,
                      candidates=in_vocab if include_zero else None, score=score)
    if n_bins:
        ties = c is not None and c.bin_ties == "random"
        uniform = rng.uniform_at(x > 0) if ties and not sample else None
        binned = bin_values(x, n_bins, side="both" if ties else "left", uniform=uniform)
        is_gene = tokens.genes >= 0
        tokens.values = torch.gather(binned, 1, tokens.genes.clamp(min=0)) * is_gene
    if c is not None and c.cls_value is not None:
        tokens.values[:, 0] = c.cls_value
    return tokens


def backbone_graph(backbone: nn.Module, tokens: Tokens, indptr: torch.Tensor, indices: torch.Tensor) -> BatchGraph:
    """Induce the gene graph on the tokens; ``<eos>`` (gene index ``n_genes``) gets its own empty graph row."""
    cls_token = not isinstance(backbone, GeneformerBackbone) or backbone.special_tokens
    if isinstance(backbone, GeneformerBackbone) and backbone.special_tokens:
        indptr = torch.cat([indptr, indptr[-1:]])
    return induced_batch_graph(tokens.genes, indptr, indices, cls_token=cls_token)


def cell_embedding(backbone: nn.Module, h: torch.Tensor, tokens: Tokens, mode: str | None = None) -> torch.Tensor:
    """Cell embedding ``(B, d_model)`` from a layer's outputs ``h``.

    ``mode="cls"``: the ``<cls>`` output; ``"cell"``: the mean of the gene tokens' outputs (padding and
    special tokens excluded). ``None``: ``"cls"`` for scGPT, ``"cell"`` for Geneformer.
    """
    if isinstance(backbone, GeneformerBackbone):
        return backbone.cell_embedding(h, tokens.genes, tokens.padding_mask, mode or "cell")
    if mode in (None, "cls"):
        return h[:, 0]
    is_gene = (~tokens.padding_mask & (tokens.genes >= 0)).to(h.dtype)
    return (h * is_gene.unsqueeze(-1)).sum(1) / is_gene.sum(1, keepdim=True).clamp_min(1.0)


def read_out(backbone: nn.Module, hidden: list[torch.Tensor], tokens: Tokens, conventions: Conventions
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the classifier's input and the latent cell embedding from every layer's outputs ``hidden``.

    Returns ``(z, latent)``, both ``(B, d_model)``: ``z`` pools the last layer (``conventions.emb_mode``);
    ``latent`` pools the layer ``conventions.emb_layer`` (``0`` last, ``-1`` the one before) and is
    L2-normalised when ``conventions.emb_norm == "l2"``.
    """
    z = cell_embedding(backbone, hidden[-1], tokens, conventions.emb_mode)
    latent = z if conventions.emb_layer == 0 else cell_embedding(
        backbone, hidden[len(hidden) - 1 + conventions.emb_layer], tokens, conventions.emb_mode)
    if conventions.emb_norm == "l2":
        latent = F.normalize(latent, p=2.0, dim=1)
    return z, latent
