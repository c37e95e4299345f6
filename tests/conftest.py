"""Shared test settings and fixtures."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

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


# ------------------------------------------------------------------ the originals' code (reference models)
REFERENCE_HINT = (
    "README's second set-up command installs them: .venv/bin/pip install -e '.[test]' (transformers) and "
    ".venv/bin/pip install --no-deps scgpt==0.2.4"
)


def _perturb(module: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Add noise to every parameter (LayerNorm affine parameters too), so that no weight is trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="session")
def bert() -> SimpleNamespace:
    """Hugging Face ``transformers``' BERT (the model class of Geneformer checkpoints), small and random.

    ``bert.masked_lm(vocab, hidden, heads, layers, inter, max_pos, act, seed)`` returns a
    ``BertForMaskedLM`` in evaluation mode; ``bert.state(model)`` its state dict as Geneformer's
    ``pytorch_model.bin`` holds it (``bert.`` keys and the MLM head ``cls.predictions.*``, the decoder tied
    to the word embeddings).
    """
    try:
        import transformers
    except ImportError as e:  # the test extra installs it
        raise ImportError(f"the BERT reference tests need transformers: {REFERENCE_HINT}") from e

    def masked_lm(vocab, hidden, heads, layers, inter, max_pos, act="relu", seed=0):
        config = transformers.BertConfig(
            vocab_size=vocab, hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=layers,
            intermediate_size=inter, max_position_embeddings=max_pos, hidden_act=act, pad_token_id=0,
            type_vocab_size=2, layer_norm_eps=1e-12, hidden_dropout_prob=0.02, attention_probs_dropout_prob=0.02,
        )
        torch.manual_seed(seed)
        model = transformers.BertForMaskedLM(config)
        _perturb(model, seed)
        return model.eval()

    def state(model):
        return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}

    return SimpleNamespace(masked_lm=masked_lm, state=state, transformers=transformers)


def _load_scgpt_code() -> SimpleNamespace:
    """scGPT 0.2.4's own modules, loaded from the installed wheel without running its package ``__init__``.

    The wheel is installed without its dependencies (torchtext and others that pin old torch versions), so
    ``import scgpt`` cannot run. Its package namespace is made here (``scgpt.logger`` as its ``__init__``
    defines it) and the files needed are executed as they are: ``model/model.py`` (imports torch, numpy, tqdm
    and its siblings ``dsbn.py`` and ``grad_reverse.py``), ``preprocess.py`` (``binning``, ``_digitize``),
    ``data_collator.py``, ``utils/util.py`` (``load_pretrained``) and ``tasks/cell_emb.py``
    (``get_batch_cell_embeddings``). Names that only ``embed_data`` uses and that need torchtext
    (``scgpt.tokenizer.GeneVocab``) are left as ``None``; so is IPython's ``get_ipython`` when IPython is
    not installed (``util.py`` imports it at the top, no function used here calls it).
    """
    import importlib.util
    import logging
    import sys
    import types
    import warnings

    spec = importlib.util.find_spec("scgpt")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the scGPT reference tests need the scgpt 0.2.4 wheel: {REFERENCE_HINT}")
    root = Path(next(iter(spec.submodule_search_locations)))

    def package(name, folder):
        mod = types.ModuleType(name)
        mod.__path__ = [str(folder)]
        mod.__package__ = name
        sys.modules[name] = mod
        return mod

    def load(name, path):
        mod_spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = mod
        mod_spec.loader.exec_module(mod)
        return mod

    top = package("scgpt", root)
    top.logger = logging.getLogger("scGPT")
    model_pkg = package("scgpt.model", root / "model")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flash_attn is not installed", category=UserWarning)
        model = load("scgpt.model.model", root / "model" / "model.py")
    model_pkg.TransformerModel = model.TransformerModel
    preprocess = load("scgpt.preprocess", root / "preprocess.py")
    collator = load("scgpt.data_collator", root / "data_collator.py")
    utils = package("scgpt.utils", root / "utils")
    # util.py imports IPython's get_ipython at the top; without IPython a stand-in serves while it loads, and is
    # removed at once (left in sys.modules it would break matplotlib, which reads IPython.version_info)
    stand_in = "IPython" not in sys.modules and importlib.util.find_spec("IPython") is None
    if stand_in:
        sys.modules["IPython"] = types.SimpleNamespace(get_ipython=lambda: None)
    try:
        util = load("scgpt.utils.util", root / "utils" / "util.py")
    finally:
        if stand_in:
            del sys.modules["IPython"]
    utils.load_pretrained = util.load_pretrained
    tokenizer = types.ModuleType("scgpt.tokenizer")
    tokenizer.GeneVocab = None  # embed_data only (torchtext)
    sys.modules["scgpt.tokenizer"] = tokenizer
    package("scgpt.tasks", root / "tasks")
    cell_emb = load("scgpt.tasks.cell_emb", root / "tasks" / "cell_emb.py")
    return SimpleNamespace(TransformerModel=model.TransformerModel, binning=preprocess.binning,
                           DataCollator=collator.DataCollator, load_pretrained=util.load_pretrained,
                           get_batch_cell_embeddings=cell_emb.get_batch_cell_embeddings, cell_emb=cell_emb,
                           root=root)


@pytest.fixture(scope="session")
def scgpt() -> SimpleNamespace:
    """scGPT 0.2.4's own code (``TransformerModel``, ``binning``, ``DataCollator``, ``load_pretrained``,
    ``get_batch_cell_embeddings``), from the wheel installed without dependencies (see ``_load_scgpt_code``)."""
    return _load_scgpt_code()
