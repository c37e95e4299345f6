"""Shared test settings and fixtures."""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

# 2 CI cores: one torch thread avoids oversubscription (small steps ran ~35x slower with 2 under load)
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(
    os.environ.get("GENOHOPTION_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture(scope="session", autouse=True)
def _quiet_scvi():
    import scvi

    scvi.settings.progress_bar_style = "tqdm"
    scvi.settings.dl_num_workers = 0
    scvi.settings.seed = 0
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; tests needing it skip when it is absent (e.g. a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (set GENOHOPTION_SHARED_DATA)")
    return SHARED_DATA


# ------------------------------------------------------------------ BERT reference (Geneformer tests)
_BERT_ACT = {"relu": F.relu, "gelu": F.gelu}


def random_bert_state(vocab, hidden, heads, layers, inter, max_pos, seed=0, prefix="bert."):
    """A random state dict with Hugging Face BertForMaskedLM key names (as Geneformer checkpoints)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        f"{prefix}embeddings.word_embeddings.weight": r(vocab, hidden, scale=1.0),
        f"{prefix}embeddings.position_embeddings.weight": r(max_pos, hidden),
        f"{prefix}embeddings.token_type_embeddings.weight": r(2, hidden),
        f"{prefix}embeddings.LayerNorm.weight": 1 + r(hidden, scale=0.1),
        f"{prefix}embeddings.LayerNorm.bias": r(hidden, scale=0.1),
        f"{prefix}embeddings.position_ids": torch.arange(max_pos)[None],
    }
    for i in range(layers):
        p = f"{prefix}encoder.layer.{i}."
        for name, (o, n) in {
            "attention.self.query": (hidden, hidden), "attention.self.key": (hidden, hidden),
            "attention.self.value": (hidden, hidden), "attention.output.dense": (hidden, hidden),
            "intermediate.dense": (inter, hidden), "output.dense": (hidden, inter),
        }.items():
            sd[p + name + ".weight"] = r(o, n, scale=1 / math.sqrt(n))
            sd[p + name + ".bias"] = r(o, scale=0.05)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            sd[p + name + ".weight"] = 1 + r(hidden, scale=0.1)
            sd[p + name + ".bias"] = r(hidden, scale=0.1)
    sd["cls.predictions.bias"] = torch.zeros(vocab)  # MLM head, unused by the backbone
    return sd


def bert_reference(sd, ids, pad, *, heads, act="relu", eps=1e-12, prefix="bert."):
    """BERT encoder (Devlin et al. 2019; HF modeling_bert) in plain torch: post-LN, absolute positions."""
    W = {k.removeprefix(prefix): v for k, v in sd.items()}
    b, n = ids.shape
    x = W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][:n][None]
    x = x + W["embeddings.token_type_embeddings.weight"][0]
    x = F.layer_norm(x, x.shape[-1:], W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], eps)
    hidden = x.shape[-1]
    d = hidden // heads
    i = 0
    while f"encoder.layer.{i}.attention.self.query.weight" in W:
        p = f"encoder.layer.{i}."

        def lin(name, h, p=p):
            return h @ W[p + name + ".weight"].T + W[p + name + ".bias"]

        q, k, v = (lin(f"attention.self.{m}", x).view(b, n, heads, d).transpose(1, 2) for m in ("query", "key", "value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + torch.where(pad, -1e30, 0.0)[:, None, None, :]
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, hidden)
        h = F.layer_norm(lin("attention.output.dense", ctx) + x, (hidden,), W[p + "attention.output.LayerNorm.weight"],
                         W[p + "attention.output.LayerNorm.bias"], eps)
        y = lin("output.dense", _BERT_ACT[act](lin("intermediate.dense", h)))
        x = F.layer_norm(y + h, (hidden,), W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"], eps)
        i += 1
    return x


@pytest.fixture(scope="session")
def bert() -> SimpleNamespace:
    """The BERT reference above (random state dict, plain-torch forward), for tests/nn and tests/model."""
    return SimpleNamespace(random_state=random_bert_state, reference=bert_reference)
