"""Genetic perturbation prediction module (GEARS-style data, scGPT-style model)."""

from __future__ import annotations

import torch

from ..data._tokenize import tokenize
from ..nn import ScGPTBackbone, induced_batch_graph
from ..nn._backbones import ExprDecoder
from ..nn._perturbation import PERT_FLAG_PAD, PerturbationEncoder
from ._base import TaskModule

LOSSES = ("mse", "gears")


def perturbation_flags(pert_genes: torch.Tensor, n_genes: int) -> torch.Tensor:
    """``(B, max_genes)`` perturbed gene indices (``-1`` = none) → ``(B, n_genes)`` bool flags."""
    flags = torch.zeros(pert_genes.shape[0], n_genes + 1, dtype=torch.bool, device=pert_genes.device)
    flags.scatter_(1, torch.where(pert_genes < 0, n_genes, pert_genes), True)
    return flags[:, :n_genes]


class PerturbationModule(TaskModule):
    """Predict a cell's expression after a genetic perturbation from a control cell.

    Input: a control cell's expression ``(B, n_genes)`` and the perturbed genes. All genes are tokens
    (scGPT's ``include_zero_gene="all"``; with more than ``max_seq_len - 1`` genes a random subset in
    training, the most expressed in evaluation, perturbed genes always kept). Each token is
    ``gene embedding + value embedding + perturbation-flag embedding`` (scGPT ``pert_encoder``,
    :class:`~genohoption.nn.PerturbationEncoder`); the tokens go through the graph-diffusion layers of
    :class:`~genohoption.nn.ScGPTBackbone`, and :class:`~genohoption.nn.ExprDecoder` predicts each
    token's expression in the perturbed cell (scGPT ``ExprDecoder``, Cui et al. 2024).

    Losses on the tokens' genes:

    - ``"mse"`` (default, scGPT): mean squared error;
    - ``"gears"`` (GEARS, Roohani et al. 2023): autofocus ``|ŷ - y|^(2 + gamma)`` plus
      ``direction_lambda`` times the direction loss ``(sign(y - c) - sign(ŷ - c))^2``, ``c`` the mean control
      expression. GEARS averages per perturbation group then over groups; here over cells and genes.

    Parameters
    ----------
    n_genes
        Number of genes (``n_vars``).
    graph_indptr, graph_indices
        Global gene graph in CSR form (row ``i`` = genes ``i`` attends to).
    control_mean
        ``(n_genes,)`` mean expression of the control cells (direction loss; stored as a buffer).
    max_seq_len
        Maximum tokens per cell including CLS.
    loss
        ``"mse"`` or ``"gears"``.
    gamma, direction_lambda
        GEARS loss parameters (defaults 2 and 0.1, as GEARS).
    **backbone_kwargs
        Passed to :class:`~genohoption.nn.ScGPTBackbone` (sizes, dropout, attention arguments).

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
        max_seq_len: int = 512,
        loss: str = "mse",
        gamma: float = 2.0,
        direction_lambda: float = 0.1,
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
        mean = torch.zeros(n_genes) if control_mean is None else control_mean.float().clone()
        self.register_buffer("control_mean", mean)
        self.backbone = ScGPTBackbone(n_genes, **backbone_kwargs)
        self.pert_encoder = PerturbationEncoder(self.backbone.d_model)
        self.decoder = ExprDecoder(self.backbone.d_model)

    def forward(self, x: torch.Tensor, pert_genes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predict the perturbed expression of the tokens' genes.

        Parameters
        ----------
        x
            ``(B, n_genes)`` expression of the (control) input cells.
        pert_genes
            ``(B, max_genes)`` int64 indices of the perturbed genes, ``-1`` = none.

        Returns
        -------
        ``"pred"`` ``(B, L)`` predicted values of the tokens, ``"genes"`` ``(B, L)`` their gene
        indices (``-1`` at CLS and padding) and ``"x_in"`` ``(B, L)`` their input values.
        """
        x = x.float()
        flags = perturbation_flags(pert_genes.long(), self.n_genes)
        tokens = tokenize(x, self.max_seq_len, cls_token=True, sample=self.training, force=flags,
                          include_zero=True)
        is_gene = tokens.genes >= 0
        token_flags = torch.gather(flags, 1, tokens.genes.clamp(min=0)).long() * is_gene
        token_flags = token_flags.masked_fill(tokens.padding_mask, PERT_FLAG_PAD)
        graph = None
        if self.attention != "dense":
            graph = induced_batch_graph(tokens.genes, self.graph_indptr, self.graph_indices, cls_token=True)
        bb = self.backbone
        # ScGPTBackbone.forward with the perturbation embedding added to the token embeddings (scGPT)
        h = (bb.encoder(bb.token_ids(tokens.genes, tokens.padding_mask)) + bb.value_encoder(tokens.values)
             + self.pert_encoder(token_flags))
        for layer in bb.transformer_encoder.layers:
            h = layer(h, graph, tokens.padding_mask)
        return {"pred": self.decoder(h), "genes": tokens.genes, "x_in": tokens.values}

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
