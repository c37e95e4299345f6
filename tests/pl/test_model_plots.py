import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import genohoption as gh


def test_confusion_matrix_rows_normalised():
    obs = pd.DataFrame({"t": ["A", "A", "B", "B"], "genohoption_prediction": ["A", "B", "B", "B"]},
                       index=list("wxyz"))
    a = ad.AnnData(np.zeros((4, 1), np.float32), obs=obs)
    fig, ax = plt.subplots()
    out = gh.pl.confusion_matrix(a, "t", ax=ax, show=False)
    assert out is ax
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), [[0.5, 0.5], [0.0, 1.0]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B"]
    plt.close(fig)
    with pytest.raises(KeyError):
        gh.pl.confusion_matrix(a, "missing", show=False)


def test_training_history_draws_each_key():
    class Fake:
        history_ = {  # noqa: RUF012
            "train_loss": pd.DataFrame({"train_loss": [3.0, 2.0, 1.0]}),
            "validation_loss": pd.DataFrame({"validation_loss": [3.5, 2.5, 2.0]}),
        }

    ax = gh.pl.training_history(Fake(), show=False)
    assert len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [3.5, 2.5, 2.0])
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="train the model"):
        gh.pl.training_history(Fake(), ("nope",), show=False)
