"""calibrate() and predict(..., unknown_threshold=...) on a small model trained on real cells."""

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

import genohoption as gh
from genohoption import _constants as K

SMALL = {"d_model": 32, "n_heads": 4, "n_layers": 1, "d_hid": 64}
TRAIN = {"max_epochs": 4, "batch_size": 32, "lr": 3e-3, "enable_progress_bar": False}


@pytest.fixture(scope="module")
def data(five_type_pbmc):
    return five_type_pbmc


@pytest.fixture(scope="module")
def model(data):
    ref, _ = data
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    model = gh.GenoHoptionModel(ref, **SMALL)
    model.train(train_size=0.8, early_stopping=False, restore_best_weights=False, **TRAIN)
    return model


def test_calibrate_on_the_validation_cells(model, data):
    ref, _ = data
    record = model.calibrate(false_unknown_rate=0.1)
    assert record is not model.calibration_ and record == model.calibration_
    held = ref[np.sort(model.validation_indices)].copy()
    assert record["source"] == "validation cells" and record["n_cells"] == held.n_obs
    assert record["temperature"] > 0 and 0 <= record["threshold"] <= 1
    assert record["nll_after"] <= record["nll_before"] + 1e-9  # T = 1 is among the temperatures searched
    assert 0 <= record["ece_after"] <= 1 and 0 <= record["ece_before"] <= 1
    # the same cells given explicitly give the same record
    again = model.calibrate(held, false_unknown_rate=0.1)
    assert again.pop("source") == "given cells"
    assert again == pytest.approx({k: v for k, v in record.items() if k != "source"})
    # the threshold calls at most 10 % of these known-type cells Unknown (split-quantile rule)
    model.predict(held, unknown_threshold="calibrated")
    unknown = (held.obs[K.PREDICTION_KEY] == K.UNKNOWN_LABEL).mean()
    assert unknown <= 0.1
    assert held.uns["genohoption"]["predict"]["unknown_threshold"] == pytest.approx(record["threshold"])
    assert held.uns["genohoption"]["predict"]["n_unknown"] == round(unknown * held.n_obs)


def test_predict_applies_the_temperature_and_the_threshold(model, data):
    _, query = data
    model.calibrate(false_unknown_rate=0.05)
    t = model.calibration_["temperature"]
    q = query.copy()
    plain = model.predict(q)
    assert K.UNKNOWN_LABEL not in plain.cat.categories  # no threshold: every cell gets a reference type
    logits = np.log(q.obsm[K.PROBABILITIES_KEY].to_numpy().astype(np.float64))
    # probabilities are softmax(logits / T): undoing T gives probabilities of another temperature, same ranking
    np.testing.assert_allclose(q.obs[K.UNCERTAINTY_KEY], 1 - q.obs[K.CONFIDENCE_KEY], atol=1e-6)
    assert q.uns["genohoption"]["predict"]["temperature"] == pytest.approx(t)
    np.testing.assert_allclose(softmax(logits, axis=1), q.obsm[K.PROBABILITIES_KEY].to_numpy(), atol=1e-5)
    # a threshold of 0.3: exactly the cells more uncertain than 0.3 are Unknown, the others keep their type
    out = model.predict(q, unknown_threshold=0.3)
    u = q.obs[K.UNCERTAINTY_KEY].to_numpy()
    assert ((out == K.UNKNOWN_LABEL).to_numpy() == (u > 0.3)).all()
    assert (out[u <= 0.3].astype(str) == plain[u <= 0.3].astype(str)).all()
    assert list(out.cat.categories) == [*map(str, model.labels), K.UNKNOWN_LABEL]
    # threshold 1: nobody is Unknown
    assert (model.predict(q, unknown_threshold=1.0) != K.UNKNOWN_LABEL).all()


def test_uncertainty_key_follows_key_added(model, data):
    _, query = data
    q = query.copy()
    model.predict(q, key_added="ref_prediction")
    assert {"ref_prediction", "ref_confidence", "ref_uncertainty"} <= set(q.obs)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "median", True])
def test_bad_threshold_leaves_the_query_unchanged(model, data, bad):
    _, query = data
    q = query.copy()
    with pytest.raises(ValueError, match="unknown_threshold"):
        model.predict(q, unknown_threshold=bad)
    assert K.PREDICTION_KEY not in q.obs and "genohoption" not in q.uns


def test_calibration_needs_held_out_cells_and_known_types(data, tmp_path):
    ref, query = data
    ref = ref.copy()
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    m = gh.GenoHoptionModel(ref, **SMALL)
    m.train(train_size=1.0, **{**TRAIN, "max_epochs": 1})
    with pytest.raises(ValueError, match=r"calibrate\(held_out\)"):
        m.calibrate()
    with pytest.raises(ValueError, match="needs a calibrated model"):
        m.predict(query.copy(), unknown_threshold="calibrated")
    odd = query.copy()
    odd.obs["bulk_labels"] = pd.Categorical(["a type it never saw"] * odd.n_obs)
    with pytest.raises(ValueError, match="not trained on"):
        m.calibrate(odd)
    with pytest.raises(KeyError, match="nope"):
        m.calibrate(query, labels_key="nope")
    with pytest.raises(ValueError, match="false_unknown_rate"):
        m.calibrate(query, false_unknown_rate=0)
    assert m.calibration_ is None
    # calibrated on other labelled cells; saved and loaded with the model; training again drops it
    record = m.calibrate(query)
    m.save(tmp_path / "m")
    loaded = gh.GenoHoptionModel.load(tmp_path / "m")
    assert loaded.calibration_.pop("source") == record.pop("source") == "given cells"
    assert loaded.calibration_ == pytest.approx(record)
    q1, q2 = query.copy(), query.copy()
    m.predict(q1, unknown_threshold="calibrated")
    loaded.predict(q2, unknown_threshold="calibrated")
    assert (q1.obs[K.PREDICTION_KEY] == q2.obs[K.PREDICTION_KEY]).all()
    m.train(train_size=1.0, **{**TRAIN, "max_epochs": 1})
    assert m.calibration_ is None
