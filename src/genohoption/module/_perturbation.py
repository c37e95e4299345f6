"""Genetic perturbation prediction module (GEARS-style data, scGPT-style model)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data._binning import bin_values
from ..data._tokenize import Tokens, tokenize
from ..nn import induced_batch_graph
from ..nn._backbones import ExprDecoder
from ..nn._perturbation import PERT_FLAG_PAD, PerturbationEncoder
from ._base import TaskModule
from ._inputs import build_backbone

LOSSES = ("mse", "gears")

CHUNK_SEED = 0
"""Seed of the fixed gene permutation that splits the genes into chunks at inference."""


def perturbation_flags(pert_genes: torch.Tensor, n_genes: int) -> torch.Tensor:
    """``(B, max_genes)`` perturbed gene indices → ``(B, n_genes)`` bool flags (``-1`` and indices ``>= n_genes`` ignored)."""
    flags = torch.zeros(pert_genes.shape[0], n_genes + 1, dtype=torch.bool, device=pert_genes.device)
    flags.scatter_(1, torch.where((pert_genes < 0) | (pert_genes >= n_genes), n_genes, pert_genes), True)
    return flags[:, :n_genes]


def _csr_rows(indptr: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR of the selected ``rows``: ``(len(rows) + 1,)`` pointers and the concatenated column indices."""
    starts = indptr[rows]
    counts = indptr[rows + 1] - starts
    total = int(counts.sum())
    first = torch.cumsum(counts, 0) - counts
    idx = torch.repeat_interleave(starts - first, counts, output_size=total) + torch.arange(total, device=rows.device)
    out_ptr = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(counts, 0, out=out_ptr[1:])
    return out_ptr, indices[idx]


def extend_graph(indptr: torch.Tensor, indices: torch.Tensor, nb_indptr: torch.Tensor, nb_indices: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Add ``k`` nodes ``n … n + k - 1`` to a CSR graph over ``n`` nodes, joined both ways to their neighbours.

    Parameters
    ----------
    indptr, indices
        CSR graph over ``n`` nodes (row ``i`` = nodes ``i`` attends to).
    nb_indptr, nb_indices
        CSR over the ``k`` new nodes of their neighbours among the ``n`` old nodes.

    Returns
    -------
    CSR pointers ``(n + k + 1,)`` and sorted, deduplicated indices of the extended graph.
    """
    n, k = indptr.numel() - 1, nb_indptr.numel() - 1
    dev = indices.device
    rows_old = torch.repeat_interleave(torch.arange(n, device=dev), indptr.diff(), output_size=indices.numel())
    rows_new = n + torch.repeat_interleave(torch.arange(k, device=dev), nb_indptr.diff(), output_size=nb_indices.numel())
    src = torch.cat([rows_old, rows_new, nb_indices])
    dst = torch.cat([indices, nb_indices, rows_new])
    size = n + k
    key = torch.unique(src * size + dst, sorted=True)
    rows = key // size
    out_ptr = torch.zeros(size + 1, dtype=torch.int64, device=dev)
    torch.cumsum(torch.bincount(rows, minlength=size), 0, out=out_ptr[1:])
    return out_ptr, key - rows * size


class PerturbationModule(TaskModule):
    """Predict a cell's expression after a genetic perturbation from a control cell.

    Input: a control cell's expression ``(B, n_genes)`` and the perturbed genes, as positions in the
    model's gene universe (measured genes ``0 … n_genes - 1``, then the unmeasured genes of the prior
    network and ``extra_genes``).

    Tokens. Every measured gene is a token (scGPT's ``include_zero_gene="all"``; with ``max_seq_len``
    below ``n_genes + 1`` a random subset in training, perturbed genes always kept). A token is
    ``gene embedding + value embedding + perturbation-flag embedding`` (scGPT ``pert_encoder``,
    :class:`~genohoption.nn.PerturbationEncoder`): a measured perturbed gene carries the flag on its
    own token. An **unmeasured** perturbed gene gets a token of its own, appended to the cell's
    sequence: its gene embedding is the mean embedding of the measured genes it is joined to in the
    prior network (its regulators and targets; with a pretrained vocabulary that holds the gene, the
    vocabulary's embedding instead) plus a learned embedding of its own for genes perturbed in the
    training data (zero for genes never seen), its value embedding that of 0, its flag "perturbed".
    In the gene graph it is joined both ways to those measured neighbours (and to CLS, like every
    gene), so the graph-diffusion attention carries its perturbation into the measured genes, as
    GEARS carries unmeasured perturbations through its gene-ontology graph (Roohani et al. 2023). A
    gene without any edge to a measured gene is joined to every measured gene (nothing says where it
    acts); without an embedding of its own either, it stands for a generic perturbation.

    The tokens go through the graph-diffusion layers of the scGPT-style backbone, and
    :class:`~genohoption.nn.ExprDecoder` predicts each measured token's expression in the perturbed
    cell (scGPT ``ExprDecoder``, Cui et al. 2024). :meth:`predict` predicts every measured gene: when
    the genes do not fit in one sequence it runs several sequences per cell, each with a chunk of the
    genes (a fixed random partition) plus the perturbed genes' tokens.

    Residual learning (``residual=True``): the decoder's output is added to the **target-gene baseline**
    of the input cell, ``b(x) = x_g · r`` on the measured perturbed genes ``g`` and ``x_j + Δ_j``
    elsewhere (``Δ`` = ``perturbation_shift``, the mean change of the training perturbations; ``r`` =
    ``target_ratio``, their mean knock-down ratio: :class:`~genohoption.tl.TargetGeneBaseline` with
    ``on="mean"``); the decoder's last layer starts at zero, so an untrained model predicts the baseline
    and training learns what the baseline misses.

    Losses on the tokens' genes:

    - ``"mse"`` (default, scGPT): mean squared error;
    - ``"gears"`` (GEARS, Roohani et al. 2023): autofocus ``|ŷ - y|^(2 + gamma)`` plus
      ``direction_lambda`` times the direction loss ``(sign(y - c) - sign(ŷ - c))^2``, ``c`` the mean control
      expression. GEARS averages per perturbation group then over groups; here over cells and genes.

    Parameters
    ----------
    n_genes
        Number of measured genes (``n_vars``).
    graph_indptr, graph_indices
        Global gene graph in CSR form (row ``i`` = genes ``i`` attends to).
    control_mean
        ``(n_genes,)`` mean expression of the control cells (direction loss; stored as a buffer).
    universe_indptr, universe_indices
        CSR over the unmeasured genes of the universe of their measured neighbours; ``None``: no
        unmeasured gene.
    own_genes
        Unmeasured genes (positions among them, ``0 … n_extra - 1``) that get a learned embedding of
        their own (those perturbed in the training data).
    max_seq_len
        Maximum tokens per cell including CLS (unmeasured perturbed genes add their tokens); ``None``:
        every measured gene.
    loss
        ``"mse"`` or ``"gears"``.
    gamma, direction_lambda
        GEARS loss parameters (defaults 2 and 0.1, as GEARS).
    backbone_config
        Architecture of a pretrained scGPT checkpoint (see :func:`genohoption.model.read_pretrained`);
        ``None`` trains from scratch.
    perturbation_shift
        ``(n_genes,)`` mean change of the training perturbations from the control mean (``Δ``); stored as
        a buffer; ``None``: zeros. The base of residual learning and of :meth:`fallback`.
    target_ratio
        Mean ratio of a measured perturbed gene's value to its control value in the training
        perturbations (``r``, default 1); stored as a buffer.
    residual
        Predict on top of the target-gene baseline (default ``False``: predict the values directly).
    **backbone_kwargs
        Sizes, dropout and attention arguments of the backbone.

    Raises
    ------
    ValueError
        For an unknown ``loss``.
    """

    def __init__(
        self,
        n_genes: int,
        graph_indptr: torch.Tensor,
        graph_indices: torch.Tensor,
        control_mean: torch.Tensor | None = None,
        *,
        universe_indptr: torch.Tensor | None = None,
        universe_indices: torch.Tensor | None = None,
        own_genes: torch.Tensor | None = None,
        max_seq_len: int | None = None,
        loss: str = "mse",
        gamma: float = 2.0,
        direction_lambda: float = 0.1,
        backbone_config: dict | None = None,
        perturbation_shift: torch.Tensor | None = None,
        target_ratio: float = 1.0,
        residual: bool = False,
        **backbone_kwargs,
    ):
        super().__init__(graph_indptr, graph_indices)
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r} is unknown; choose one of {LOSSES}.")
        self.n_genes = n_genes
        self.max_seq_len = max_seq_len
        self.loss_kind = loss
        self.gamma = gamma
        self.direction_lambda = direction_lambda
        self.attention = backbone_kwargs.get("attention", "ppr")
        config = backbone_config or {}
        self.category_values = config.get("input_emb_style") == "category"
        self.n_bins = config.get("n_bins")
        mean = torch.zeros(n_genes) if control_mean is None else control_mean.float().clone()
        self.register_buffer("control_mean", mean)
        self.backbone = build_backbone(n_genes, "scgpt", backbone_config, {**backbone_kwargs, "max_seq_len": max_seq_len})
        d_model = self.backbone.d_model
        self.pert_encoder = PerturbationEncoder(d_model)
        self.decoder = ExprDecoder(d_model)
        if universe_indptr is None:
            universe_indptr, universe_indices = torch.zeros(1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
        self.register_buffer("universe_indptr", universe_indptr.to(torch.int64).clone())
        self.register_buffer("universe_indices", universe_indices.to(torch.int64).clone())
        n_extra = self.universe_indptr.numel() - 1
        own = torch.zeros(0, dtype=torch.int64) if own_genes is None else own_genes.to(torch.int64)
        slot = torch.full((n_extra,), own.numel(), dtype=torch.int64)
        slot[own] = torch.arange(own.numel())
        self.register_buffer("extra_slot", slot)
        self.register_buffer("extra_to_token", torch.full((n_extra,), -1, dtype=torch.int64))
        self.own_embedding = nn.Embedding(own.numel() + 1, d_model, padding_idx=own.numel())
        nn.init.zeros_(self.own_embedding.weight)
        shift = torch.zeros(n_genes) if perturbation_shift is None else perturbation_shift.float().clone()
        self.register_buffer("perturbation_shift", shift)
        self.register_buffer("target_ratio", torch.tensor(float(target_ratio)))
        self.residual = bool(residual)
        if self.residual:  # start at the baseline
            last = self.decoder.fc[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    BASELINE_BUFFERS = ("perturbation_shift", "target_ratio")
    """Buffers of the target-gene baseline; checkpoints saved without them load with ``Δ = 0``, ``r = 1``."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.BASELINE_BUFFERS:
            if prefix + name not in state_dict:
                state_dict[prefix + name] = torch.zeros_like(getattr(self, name)) if name == "perturbation_shift" \
                    else torch.ones_like(getattr(self, name))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def baseline(self, x: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        """Target-gene baseline ``(B, n_genes)``: ``x · r`` on the flagged genes, ``x + Δ`` elsewhere.

        Parameters
        ----------
        x
            ``(B, n_genes)`` input (control) expression.
        flags
            ``(B, n_genes)`` bool, the measured perturbed genes.
        """
        x = x.float()
        ratio = self.target_ratio.to(x.dtype)
        return torch.where(flags, x * ratio, x + self.perturbation_shift.to(x.dtype))

    def fallback(self, x: torch.Tensor) -> torch.Tensor:
        """Prediction for a perturbation the model knows nothing about: ``x + Δ`` (the mean baseline), ``(B, n_genes)``."""
        return x.float() + self.perturbation_shift.to(torch.float32)

    def informative(self, pert_genes: torch.Tensor) -> torch.Tensor:
        """Whether the model has information about each perturbed gene (``(…,)`` universe positions → bool).

        A measured gene is informative; an unmeasured one is when it has an edge to a measured gene, was
        perturbed in the training data (an embedding of its own) or is in a pretrained vocabulary. ``-1``
        (no gene) counts as informative.
        """
        pg = pert_genes.long()
        k = (pg - self.n_genes).clamp(min=0, max=max(self.n_extra - 1, 0))
        if self.n_extra == 0:
            return pg < self.n_genes
        has_edges = (self.universe_indptr[k + 1] - self.universe_indptr[k]) > 0
        own = self.extra_slot[k] < self.own_embedding.num_embeddings - 1
        vocab = self.extra_to_token[k] >= 0
        return (pg < self.n_genes) | has_edges | own | vocab

    @property
    def n_extra(self) -> int:
        """Unmeasured genes of the universe."""
        return self.universe_indptr.numel() - 1

    # ---------------------------------------------------------------- tokens
    def _values(self, x: torch.Tensor) -> torch.Tensor:
        """Token values of all genes: binned per cell for a category value encoder, else ``x``."""
        return bin_values(x, self.n_bins) if self.category_values and self.n_bins else x

    def _extra_embeddings(self, extra: torch.Tensor) -> torch.Tensor:
        """``(k, d_model)`` gene embeddings of unmeasured genes ``extra`` (positions among the unmeasured genes)."""
        bb = self.backbone
        weight = bb.encoder.embedding.weight
        nb_ptr, nb = _csr_rows(self.universe_indptr, self.universe_indices, extra)
        ids = nb if bb.gene_to_token is None else bb.gene_to_token[nb]
        valid = (ids >= 0).to(weight.dtype)
        bag = torch.repeat_interleave(torch.arange(extra.numel(), device=extra.device), nb_ptr.diff(),
                                      output_size=nb.numel())
        sums = weight.new_zeros(extra.numel(), weight.shape[1]).index_add_(0, bag, weight[ids.clamp(min=0)]
                                                                            * valid.unsqueeze(1))
        counts = weight.new_zeros(extra.numel()).index_add_(0, bag, valid)
        base = sums / counts.clamp(min=1).unsqueeze(1)  # mean of the measured neighbours' embeddings
        token = self.extra_to_token[extra]
        base = torch.where((token >= 0).unsqueeze(1), weight[token.clamp(min=0)], base)
        return bb.encoder.enc_norm(base + self.own_embedding(self.extra_slot[extra]))

    def _extra_neighbors(self, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Graph neighbours of unmeasured genes: their measured neighbours, or every measured gene if none."""
        nb_ptr, nb = _csr_rows(self.universe_indptr, self.universe_indices, extra)
        counts = nb_ptr.diff()
        if bool((counts > 0).all()):
            return nb_ptr, nb
        every = torch.arange(self.n_genes, device=nb.device)
        parts = [nb[nb_ptr[j]:nb_ptr[j + 1]] if counts[j] > 0 else every for j in range(extra.numel())]
        sizes = torch.as_tensor([t.numel() for t in parts], device=nb.device)
        out_ptr = torch.zeros(extra.numel() + 1, dtype=torch.int64, device=nb.device)
        torch.cumsum(sizes, 0, out=out_ptr[1:])
        return out_ptr, torch.cat(parts)

    def _run(self, tokens: Tokens, values_all: torch.Tensor, flags: torch.Tensor, extra: torch.Tensor
             ) -> dict[str, torch.Tensor]:
        """Append the unmeasured perturbed genes' tokens, encode, decode."""
        genes, pad = tokens.genes, tokens.padding_mask
        b, width = genes.shape
        dev = genes.device
        is_gene = genes >= 0
        values = torch.gather(values_all, 1, genes.clamp(min=0)) * is_gene
        token_flags = torch.gather(flags, 1, genes.clamp(min=0)) & is_gene
        extra_sorted = torch.sort(torch.where(extra < 0, self.n_extra, extra), dim=1).values
        has_extra = extra_sorted < self.n_extra
        m = extra_sorted.shape[1]
        graph_genes = genes
        is_extra = torch.zeros_like(pad)
        extra_emb = inverse = None
        if bool(has_extra.any()):
            lengths = (~pad).sum(1)
            total = width + m + 1  # last column: a sink for absent extra tokens
            pos = torch.where(has_extra, lengths.unsqueeze(1) + torch.arange(m, device=dev), total - 1)
            genes_new = torch.full((b, total), -1, dtype=genes.dtype, device=dev)
            genes_new[:, :width] = torch.where(pad, -1, genes)
            real = torch.zeros((b, total), dtype=torch.bool, device=dev)
            real[:, :width] = ~pad
            is_extra = torch.zeros((b, total), dtype=torch.bool, device=dev)
            is_extra.scatter_(1, pos, has_extra)
            extra_id = torch.full((b, total), -1, dtype=torch.int64, device=dev)
            extra_id.scatter_(1, pos, torch.where(has_extra, extra_sorted, -1))
            new_width = int((lengths + has_extra.sum(1)).max())
            genes, is_extra, extra_id = genes_new[:, :new_width], is_extra[:, :new_width], extra_id[:, :new_width]
            pad = ~(real[:, :new_width] | is_extra)
            values = F.pad(values, (0, new_width - width))[:, :new_width]
            token_flags = F.pad(token_flags, (0, new_width - width))[:, :new_width] | is_extra
            present, inverse = torch.unique(extra_id[is_extra], return_inverse=True)
            extra_emb = self._extra_embeddings(present)
            graph_genes = genes.clone()
            graph_genes[is_extra] = self.n_genes + inverse
        graph = None
        if self.attention != "dense":
            indptr, indices = self.graph_indptr, self.graph_indices
            if extra_emb is not None:
                nb_ptr, nb = self._extra_neighbors(present)
                indptr, indices = extend_graph(indptr, indices, nb_ptr, nb)
            graph = induced_batch_graph(graph_genes, indptr, indices, cls_token=True)
        bb = self.backbone
        if bb.pad_value != 0:
            fill = bb.pad_value if bb.input_emb_style == "continuous" or bb.pad_value >= 0 else 0
            values = values.masked_fill(pad, fill)
        h = bb.encoder(bb.token_ids(genes, pad))
        if extra_emb is not None:
            h = h.masked_scatter(is_extra.unsqueeze(-1), extra_emb[inverse].to(h.dtype))
        flag_ids = token_flags.long().masked_fill(pad, PERT_FLAG_PAD)
        h = h + bb.value_encoder(values) + self.pert_encoder(flag_ids)  # scGPT TransformerGenerator._encode
        for layer in bb.transformer_encoder.layers:
            h = layer(h, graph, pad)
        return {"pred": self.decoder(h), "genes": genes, "x_in": values}

    def _split(self, pert_genes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Measured-gene flags ``(B, n_genes)`` and unmeasured genes ``(B, m)`` (``-1`` = none)."""
        pg = pert_genes.long()
        flags = perturbation_flags(pg, self.n_genes)
        extra = torch.where(pg >= self.n_genes, pg - self.n_genes, -1)
        if extra.numel() and int(extra.max()) >= self.n_extra:
            raise ValueError(f"perturbed gene index {int(extra.max()) + self.n_genes} is outside the gene universe "
                             f"({self.n_genes + self.n_extra} genes).")
        return flags, extra

    def forward(self, x: torch.Tensor, pert_genes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predict the perturbed expression of the tokens' genes.

        Parameters
        ----------
        x
            ``(B, n_genes)`` expression of the (control) input cells.
        pert_genes
            ``(B, max_genes)`` int64 universe positions of the perturbed genes, ``-1`` = none.

        Returns
        -------
        ``"pred"`` ``(B, L)`` predicted values of the tokens, ``"genes"`` ``(B, L)`` their measured gene
        indices (``-1`` at CLS, padding and the unmeasured genes' tokens) and ``"x_in"`` ``(B, L)`` their
        input values.
        """
        x = x.float()
        flags, extra = self._split(pert_genes)
        length = self.n_genes + 1 if self.max_seq_len is None else self.max_seq_len
        tokens = tokenize(x, length, cls_token=True, sample=self.training, force=flags, include_zero=True)
        out = self._run(tokens, self._values(x), flags, extra)
        if self.residual:
            out["pred"] = out["pred"] + self._token_baseline(x, flags, out["genes"])
        return out

    def _token_baseline(self, x: torch.Tensor, flags: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
        """Return the baseline value of each token's gene ``(B, L)`` (0 at CLS, padding, unmeasured genes' tokens)."""
        base = torch.gather(self.baseline(x, flags), 1, genes.clamp(min=0))
        return base * (genes >= 0)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, pert_genes: torch.Tensor) -> torch.Tensor:
        """Predicted perturbed expression of every measured gene, ``(B, n_genes)``.

        One sequence per cell when all genes fit in ``max_seq_len``; otherwise the genes are split
        into chunks of ``max_seq_len - 1 - (perturbed measured genes)`` by a fixed random permutation
        (seed :data:`CHUNK_SEED`), and each chunk is one sequence holding the perturbed genes' tokens too.
        """
        x = x.float()
        flags, extra = self._split(pert_genes)
        n = self.n_genes
        values = self._values(x)
        out = x.clone()
        n_flags = int(flags.sum(1).max()) if flags.numel() else 0
        if self.max_seq_len is None or n + 1 <= self.max_seq_len:
            chunks = [torch.arange(n, device=x.device)]
        else:
            size = max(1, self.max_seq_len - 1 - n_flags)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(CHUNK_SEED)).to(x.device)
            chunks = list(perm.split(size))
        rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
        for chunk in chunks:
            in_chunk = torch.zeros(n, dtype=torch.bool, device=x.device)
            in_chunk[chunk] = True
            keep = in_chunk.unsqueeze(0) | flags
            tokens = tokenize(x * keep, int(keep.sum(1).max()) + 1, cls_token=True, force=keep)
            res = self._run(tokens, values, flags, extra)
            genes = res["genes"]
            if self.residual:
                res["pred"] = res["pred"] + self._token_baseline(x, flags, genes)
            own = (genes >= 0) & in_chunk[genes.clamp(min=0)]
            out[rows.expand_as(genes)[own], genes[own]] = res["pred"][own].to(out.dtype)
        return out

    def loss(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and plain MSE between predicted and observed values of the tokens' genes.

        Parameters
        ----------
        outputs
            Output of :meth:`forward`.
        target
            ``(B, n_genes)`` observed expression of the perturbed cells.

        Returns
        -------
        The training loss (``"mse"`` or ``"gears"``, mean over cells) and the MSE over all token
        values (a metric), both scalars.
        """
        pred, genes = outputs["pred"], outputs["genes"]
        mask = (genes >= 0).to(pred.dtype)
        target = torch.gather(target.to(pred.dtype), 1, genes.clamp(min=0))
        n_tok = mask.sum(1).clamp(min=1)
        sq = (pred - target) ** 2
        mse_cell = (sq * mask).sum(1) / n_tok
        if self.loss_kind == "mse":
            per_cell = mse_cell
        else:
            c = self.control_mean[genes.clamp(min=0)]
            focus = ((pred - target).abs() ** (2 + self.gamma) * mask).sum(1) / n_tok
            direction = (((torch.sign(target - c) - torch.sign(pred - c)) ** 2) * mask).sum(1) / n_tok
            per_cell = focus + self.direction_lambda * direction
        mse = (sq * mask).sum() / mask.sum().clamp(min=1)
        return per_cell.mean(), mse.detach()
