"""How a cell's batch enters a model: batch embedding, domain-specific normalisation, adversarial discriminator.

The three mechanisms of scGPT's integration (Cui et al. 2024, ``scgpt/model/model.py``): a batch embedding
(``BatchLabelEncoder``) that the expression decoders read beside the transformer output, a
domain-specific batch normalisation of the input embeddings (``DomainSpecificBatchNorm1d``), and an
adversarial batch discriminator on the cell embedding behind a gradient-reversal layer
(``AdversarialDiscriminator``, ``grad_reverse``). Written anew here for minibatches that mix batches and for
batches that were not seen in training.

Batch codes: ``0 … n_batches - 1`` are the training batches; ``n_batches`` is the *unknown batch* (a cell
whose batch was not seen in training, when its batch cannot be adapted to); codes above ``n_batches`` are
new batches whose statistics :class:`DomainSpecificBatchNorm` estimated from their own cells
(:meth:`~DomainSpecificBatchNorm.begin_adaptation`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

BATCH_REPRESENTATIONS = ("token", "dsbn", "token+dsbn")
"""How the batch enters a model (``batch_representation`` of :class:`~genohoption.GenoHoptionModel`)."""


def batch_parts(batch_representation: str | None) -> tuple[bool, bool]:
    """``(token, dsbn)``: which of the two mechanisms ``batch_representation`` asks for.

    Raises
    ------
    ValueError
        For a value that is not one of :data:`BATCH_REPRESENTATIONS` or ``None``.
    """
    if batch_representation is not None and batch_representation not in BATCH_REPRESENTATIONS:
        raise ValueError(f"batch_representation={batch_representation!r} is unknown; choose one of "
                         f"{BATCH_REPRESENTATIONS} or None.")
    parts = set((batch_representation or "").split("+"))
    return "token" in parts, "dsbn" in parts


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.neg() * ctx.lambd, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-lambd`` in the backward pass.

    The gradient-reversal layer of domain-adversarial training (Ganin & Lempitsky 2015; scGPT
    ``grad_reverse``): a discriminator behind it learns to predict the batch, while the layers before it
    receive the opposite gradient and learn to hide the batch.

    Parameters
    ----------
    x
        Any tensor.
    lambd
        Scale of the reversed gradient (default 1, as scGPT).
    """
    return _GradReverse.apply(x, float(lambd))


class AdversarialDiscriminator(nn.Module):
    """Predict a cell's batch from its embedding, through a gradient-reversal layer (scGPT ``AdversarialDiscriminator``).

    ``n_layers - 1`` blocks of ``Linear → LeakyReLU → LayerNorm`` and an output layer, as scGPT's. Its
    cross-entropy, added to the task's loss, trains it to recognise the batch and (reversed) the encoder to
    make the batch unrecognisable.

    Parameters
    ----------
    d_in
        Width of the cell embedding.
    n_batches
        Number of training batches (outputs).
    n_layers
        Linear layers, the output layer included (default 3, as scGPT).
    lambd
        Scale of the reversed gradient (:func:`grad_reverse`).
    """

    def __init__(self, d_in: int, n_batches: int, n_layers: int = 3, lambd: float = 1.0):
        super().__init__()
        blocks: list[nn.Module] = []
        for _ in range(n_layers - 1):
            blocks += [nn.Linear(d_in, d_in), nn.LeakyReLU(), nn.LayerNorm(d_in)]
        self._decoder = nn.ModuleList(blocks)
        self.out_layer = nn.Linear(d_in, n_batches)
        self.lambd = float(lambd)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, d_in)`` cell embeddings → ``(B, n_batches)`` batch logits (gradient reversed into ``z``)."""
        x = grad_reverse(z, self.lambd)
        for block in self._decoder:
            x = block(x)
        return self.out_layer(x)


class BatchEncoder(nn.Module):
    """Batch embedding: ``LayerNorm(Embedding(batch))`` (scGPT ``BatchLabelEncoder``).

    Row ``n_batches`` is the unknown batch: it is the padding row of the embedding (zero, never trained),
    and every code at or above ``n_batches`` reads it.

    Parameters
    ----------
    n_batches
        Number of training batches.
    d_model
        Embedding width.
    """

    def __init__(self, n_batches: int, d_model: int):
        super().__init__()
        self.n_batches = n_batches
        self.embedding = nn.Embedding(n_batches + 1, d_model, padding_idx=n_batches)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, batch_index: torch.Tensor) -> torch.Tensor:
        """``(B,)`` batch codes → ``(B, d_model)`` embeddings."""
        return self.enc_norm(self.embedding(batch_index.long().clamp(0, self.n_batches)))


class DomainSpecificBatchNorm(nn.Module):
    """Batch normalisation with statistics of its own for each batch (domain-specific BatchNorm, scGPT ``dsbn``).

    Each row (a cell, or a token of a cell) is standardised feature by feature with the mean and variance
    of the rows of its own batch: ``y = (x - μ_b) / sqrt(σ²_b + eps)`` (then a shared ``weight * y + bias``
    with ``affine=True``). In training, ``μ_b`` and ``σ²_b`` (biased) are computed over the minibatch's rows
    of batch ``b`` and each batch's running statistics are updated as :class:`torch.nn.BatchNorm1d` does
    (``momentum``; ``None``: cumulative average; unbiased variance); a batch with a single row in a minibatch
    is normalised with its running statistics, which it does not update. In evaluation, the running
    statistics of the row's batch are used.

    Unlike scGPT's ``DomainSpecificBatchNorm1d`` (one ``BatchNorm1d`` per batch, applied to a whole minibatch
    drawn from a single batch), minibatches may mix batches; rows outside ``mask`` (CLS and padding tokens)
    are neither normalised nor counted.

    Batches not seen in training (codes ``>= n_batches``): code ``n_batches`` is normalised with the pooled
    statistics of the training batches (the mixture of their running statistics, equal weights,
    :meth:`pooled_statistics`); codes above it with statistics estimated from their own rows
    (:meth:`begin_adaptation` / :meth:`end_adaptation`: AdaBN, Li et al. 2016), or the pooled statistics until
    then.

    Parameters
    ----------
    num_features
        Features ``C``.
    n_batches
        Number of training batches.
    eps
        Added to the variance.
    momentum
        Weight of a new minibatch in the running statistics (default 0.1); ``None``: cumulative average.
    affine
        Learn one ``weight`` and ``bias`` shared by all batches (default ``False``, as scGPT's ``dsbn``).
    """

    def __init__(self, num_features: int, n_batches: int, *, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = False):
        super().__init__()
        if n_batches < 1:
            raise ValueError(f"n_batches must be >= 1, got {n_batches}.")
        self.num_features, self.n_batches = num_features, n_batches
        self.eps, self.momentum, self.affine = eps, momentum, affine
        self.track_running_stats = True
        self.register_buffer("running_mean", torch.zeros(n_batches, num_features))
        self.register_buffer("running_var", torch.ones(n_batches, num_features))
        self.register_buffer("num_batches_tracked", torch.zeros(n_batches, dtype=torch.long))
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self._adapted: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._collected: dict[int, list[torch.Tensor]] | None = None

    def extra_repr(self) -> str:
        return (f"{self.num_features}, n_batches={self.n_batches}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}")

    def reset_running_stats(self) -> None:
        """Reset the running statistics to mean 0, variance 1, no minibatch tracked."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def pooled_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance ``(C,)`` of the equal-weight mixture of the training batches' running statistics."""
        mean = self.running_mean.mean(0)
        var = (self.running_var + self.running_mean**2).mean(0) - mean**2
        return mean, var.clamp(min=0.0)

    # ---------------------------------------------------------------- new batches (AdaBN)
    def begin_adaptation(self) -> None:
        """Start collecting the statistics of new batches (codes ``> n_batches``) from the rows that follow.

        In evaluation mode, until :meth:`end_adaptation`, every forward pass adds the rows of each new batch
        to its sums (the rows are normalised as before meanwhile).
        """
        self._collected = {}

    def end_adaptation(self) -> None:
        """Fix the statistics of the new batches collected since :meth:`begin_adaptation`.

        Each new batch gets the mean and (biased) variance of its rows, used until :meth:`clear_adaptation`.
        """
        collected, self._collected = self._collected or {}, None
        for code, (n, s, ss) in collected.items():
            mean = s / n
            var = (ss / n - mean**2).clamp(min=0.0)
            self._adapted[code] = (mean.to(self.running_mean.dtype), var.to(self.running_var.dtype))

    def clear_adaptation(self) -> None:
        """Forget the statistics of new batches (they go back to the pooled statistics)."""
        self._adapted, self._collected = {}, None

    def _collect(self, rows: torch.Tensor, codes: torch.Tensor) -> None:
        new = codes > self.n_batches
        if not bool(new.any()):
            return
        r, c = rows[new].detach().double(), codes[new]
        for code in c.unique().tolist():
            sel = r[c == code]
            n, s, ss = self._collected.get(code, (0, 0.0, 0.0))
            self._collected[code] = (n + sel.shape[0], s + sel.sum(0), ss + (sel**2).sum(0))

    # ---------------------------------------------------------------- forward
    def _table(self, n_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n_codes, C)`` means and variances for evaluation: running, pooled, adapted."""
        mean = self.running_mean.new_empty(n_codes, self.num_features)
        var = self.running_var.new_empty(n_codes, self.num_features)
        known = min(n_codes, self.n_batches)
        mean[:known], var[:known] = self.running_mean[:known], self.running_var[:known]
        if n_codes > self.n_batches:
            pooled = self.pooled_statistics()
            for code in range(self.n_batches, n_codes):
                mean[code], var[code] = self._adapted.get(code, pooled)
        return mean, var

    def forward(self, x: torch.Tensor, batch_index: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise ``x`` with the statistics of each row's batch.

        Parameters
        ----------
        x
            ``(N, C)`` rows, or ``(B, L, C)`` tokens of ``B`` cells.
        batch_index
            ``(N,)`` or ``(B,)`` batch codes (a cell's tokens share its code).
        mask
            With ``(B, L, C)`` input: ``(B, L)`` bool, ``True`` for the tokens to normalise; ``None``: all.

        Returns
        -------
        Tensor of the shape of ``x``; rows outside ``mask`` unchanged.

        Raises
        ------
        ValueError
            For codes of batches not seen in training during training, or shapes that do not match.
        """
        codes = batch_index.reshape(-1).long()
        if x.dim() == 3:
            if codes.shape[0] != x.shape[0]:
                raise ValueError(f"batch_index has {codes.shape[0]} codes for {x.shape[0]} cells.")
            if mask is None:
                mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            rows, row_codes = x[mask], codes[:, None].expand(x.shape[:2])[mask]
        elif x.dim() == 2:
            if codes.shape[0] != x.shape[0]:
                raise ValueError(f"batch_index has {codes.shape[0]} codes for {x.shape[0]} rows.")
            rows, row_codes = x, codes
        else:
            raise ValueError(f"x must be (N, C) or (B, L, C), got shape {tuple(x.shape)}.")
        if rows.shape[0] == 0:
            return x
        if bool((row_codes < 0).any()):
            raise ValueError("batch codes must be non-negative.")
        y = self._normalize(rows, row_codes)
        if x.dim() == 2:
            return y
        out = x.clone()
        out[mask] = y
        return out

    def _normalize(self, rows: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        if self.training:
            if bool((codes >= self.n_batches).any()):
                raise ValueError(f"batch codes must be < n_batches={self.n_batches} in training (batches seen in "
                                 "training); new batches are for evaluation.")
            mean, var = self._minibatch_statistics(rows, codes)
        else:
            if self._collected is not None:
                self._collect(rows, codes)
            mean, var = self._table(int(codes.max()) + 1)
            mean, var = mean.to(rows.dtype), var.to(rows.dtype)
        y = (rows - mean[codes]) * torch.rsqrt(var[codes] + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y

    def _minibatch_statistics(self, rows: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the per-batch mean and biased variance ``(n_batches, C)`` of the rows; update the running ones.

        A batch with fewer than two rows in the minibatch gets its running statistics.
        """
        k = self.n_batches
        counts = torch.bincount(codes, minlength=k).to(rows.dtype)
        denom = counts.clamp(min=1.0)[:, None]
        mean = rows.new_zeros(k, rows.shape[1]).index_add(0, codes, rows) / denom
        var = rows.new_zeros(k, rows.shape[1]).index_add(0, codes, (rows - mean[codes]) ** 2) / denom
        enough = counts >= 2
        with torch.no_grad():
            if bool(enough.any()):
                idx = enough.nonzero().squeeze(1)
                self.num_batches_tracked[idx] += 1
                if self.momentum is None:
                    factor = (1.0 / self.num_batches_tracked[idx].to(rows.dtype))[:, None]
                else:
                    factor = torch.full((idx.numel(), 1), float(self.momentum), dtype=rows.dtype,
                                        device=rows.device)
                unbiased = var[idx].detach() * (counts[idx] / (counts[idx] - 1))[:, None]
                self.running_mean[idx] = (1 - factor) * self.running_mean[idx] + factor * mean[idx].detach()
                self.running_var[idx] = (1 - factor) * self.running_var[idx] + factor * unbiased
        keep = enough[:, None]
        mean = torch.where(keep, mean, self.running_mean.to(rows.dtype))
        var = torch.where(keep, var, self.running_var.to(rows.dtype))
        return mean, var


class BatchInputs(nn.Module):
    """The batch parts a backbone shares with the tasks that train it: batch embedding and input DSBN.

    Parameters
    ----------
    n_batches
        Number of training batches.
    d_model
        Width of the backbone.
    token
        Build a :class:`BatchEncoder` (``encoder``), read by the expression decoders of pretraining.
    dsbn
        Build a :class:`DomainSpecificBatchNorm` (``dsbn``, no affine, as scGPT) of the gene tokens' input
        embeddings.
    """

    def __init__(self, n_batches: int, d_model: int, *, token: bool, dsbn: bool):
        super().__init__()
        self.n_batches = n_batches
        self.encoder = BatchEncoder(n_batches, d_model) if token else None
        self.dsbn = DomainSpecificBatchNorm(d_model, n_batches) if dsbn else None

    def input_norm(self, batch_index: torch.Tensor, mask: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Return the normalisation of the ``(B, L, d_model)`` input embeddings (``mask``: gene tokens), or ``None``."""
        if self.dsbn is None:
            return None
        return lambda x: self.dsbn(x, batch_index, mask)

    def embedding(self, batch_index: torch.Tensor) -> torch.Tensor | None:
        """``(B, d_model)`` batch embeddings, or ``None`` without ``token``."""
        return None if self.encoder is None else self.encoder(batch_index)


def adversarial_batch_loss(batch_logits: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the discriminator's ``(B, n_batches)`` logits against the ``(B,)`` batch codes."""
    return F.cross_entropy(batch_logits, batch_index.reshape(-1).long())
