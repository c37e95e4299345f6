"""GenoHoptionEnsemble: members as the single model would train them, averaged probabilities, calibration, I/O."""

import numpy as np
import pytest
import scvi
import torch
from scipy.special import softmax

import genohoption as gh
from genohoption import _constants as K
from genohoption.model._ensemble import member_seed

SMALL = {"d_model": 32, "n_heads": 4, "n_layers": 1, "d_hid": 64}
TRAIN = {"max_epochs": 2, "batch_size": 32, "lr": 3e-3, "train_size": 0.8, "early_stopping": False,
         "restore_best_weights": False, "enable_progress_bar": False}


@pytest.fixture(scope="module")
def data(five_type_pbmc):
    ref, query = five_type_pbmc
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    return ref, query


@pytest.fixture(scope="module")
def trained(data):
    """A single model and a 3-member ensemble, built and trained from the same seed."""
    ref, _ = data
    scvi.settings.seed = 7
    single = gh.GenoHoptionModel(ref, **SMALL)
    single.train(**TRAIN)
    scvi.settings.seed = 7
    ensemble = gh.model.GenoHoptionEnsemble(ref, n_members=3, **SMALL)
    ensemble.train(**TRAIN)
    return single, ensemble


def _state(model):
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def test_member_zero_is_the_single_model_and_the_others_differ(trained):
    single, ensemble = trained
    first = _state(ensemble.members[0])
    for k, v in _state(single).items():
        torch.testing.assert_close(first[k], v, rtol=0, atol=0)
    weights = [next(m.module.parameters()).detach() for m in ensemble.members]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    # every member held out member 0's cells, so calibrate() can use them
    for m in ensemble.members[1:]:
        np.testing.assert_array_equal(np.sort(m.validation_indices), np.sort(single.validation_indices))
        np.testing.assert_array_equal(np.sort(m.train_indices), np.sort(single.train_indices))
    assert ensemble.is_trained_ and len(ensemble.history_) == 3
    assert member_seed(7, 1) != member_seed(7, 2) != member_seed(8, 1)


def test_probabilities_are_the_members_mean(trained, data):
    _, query = data
    _, ensemble = trained
    q = query.copy()
    ensemble.calibration_ = None
    out = ensemble.predict(q)
    per_member = []
    for m in ensemble.members:
        c = query.copy()
        m.calibration_ = None
        m.predict(c)
        per_member.append(c.obsm[K.PROBABILITIES_KEY].to_numpy().astype(np.float64))
    mean = np.mean(per_member, axis=0)
    np.testing.assert_allclose(q.obsm[K.PROBABILITIES_KEY].to_numpy(), mean, atol=1e-5)
    assert (out.astype(str).to_numpy() == np.asarray(ensemble.classes)[mean.argmax(1)]).all()
    np.testing.assert_allclose(q.obs[K.UNCERTAINTY_KEY], 1 - mean.max(1), atol=1e-5)
    assert q.uns["genohoption"]["predict"]["n_members"] == 3
    probs = ensemble.predict_probabilities(query)
    np.testing.assert_allclose(probs.to_numpy(), mean, atol=1e-5)
    assert list(probs.columns) == ensemble.classes
    z = ensemble.get_latent_representation(query)
    dims = [m.get_latent_representation(query).shape[1] for m in ensemble.members]
    assert z.shape == (query.n_obs, sum(dims))
    np.testing.assert_allclose(z[:, :dims[0]], ensemble.members[0].get_latent_representation(query), atol=1e-5)


def test_one_member_predicts_as_the_model(trained, data):
    single, _ = trained
    _, query = data
    one = gh.model.GenoHoptionEnsemble.from_models([single])
    a, b = query.copy(), query.copy()
    single.calibration_ = None
    single.predict(a)
    one.predict(b)
    np.testing.assert_allclose(a.obsm[K.PROBABILITIES_KEY].to_numpy(), b.obsm[K.PROBABILITIES_KEY].to_numpy(),
                               atol=1e-5)
    rec_model, rec_one = single.calibrate(), one.calibrate()
    assert rec_one["temperature"] == pytest.approx(rec_model["temperature"], rel=1e-4)
    assert rec_one["threshold"] == pytest.approx(rec_model["threshold"], abs=1e-5)


def test_calibrate_then_unknown_and_save_load_round_trip(trained, data, tmp_path):
    ref, query = data
    _, ensemble = trained
    record = ensemble.calibrate(false_unknown_rate=0.1)
    assert record["source"] == "validation cells" and record["n_members"] == 3
    assert record["n_cells"] == len(ensemble.members[0].validation_indices)
    # the same cells given explicitly: the same temperature and threshold
    held = ref[np.sort(ensemble.members[0].validation_indices)].copy()
    again = ensemble.calibrate(held, false_unknown_rate=0.1)
    assert again["temperature"] == pytest.approx(record["temperature"]) and again["source"] == "given cells"
    # the scores are temperature-scaled log mean probabilities: T undone gives the mean again
    q = query.copy()
    out = ensemble.predict(q, unknown_threshold="calibrated")
    u = q.obs[K.UNCERTAINTY_KEY].to_numpy()
    assert ((out == K.UNKNOWN_LABEL).to_numpy() == (u > record["threshold"])).all()
    calibration, ensemble.calibration_ = ensemble.calibration_, None
    mean = ensemble.predict_probabilities(query).to_numpy()  # uncalibrated: the members' mean
    ensemble.calibration_ = calibration
    np.testing.assert_allclose(ensemble.predict_probabilities(query).to_numpy(), q.obsm[K.PROBABILITIES_KEY].to_numpy(),
                               atol=1e-5)
    scores = np.log(q.obsm[K.PROBABILITIES_KEY].to_numpy().astype(np.float64)) * record["temperature"]
    np.testing.assert_allclose(softmax(scores, axis=1), mean, atol=1e-4)
    ensemble.save(tmp_path / "ens")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ensemble.save(tmp_path / "ens")
    loaded = gh.model.GenoHoptionEnsemble.load(tmp_path / "ens", adata=query)
    assert loaded.n_members == 3 and loaded.calibration_ == pytest.approx(ensemble.calibration_)
    r = query.copy()
    loaded.predict(r, unknown_threshold="calibrated")
    np.testing.assert_allclose(r.obsm[K.PROBABILITIES_KEY].to_numpy(), q.obsm[K.PROBABILITIES_KEY].to_numpy(),
                               atol=1e-6)
    assert (r.obs[K.PREDICTION_KEY] == q.obs[K.PREDICTION_KEY]).all()
    with pytest.raises(FileNotFoundError, match=r"GenoHoptionEnsemble\.save"):
        gh.model.GenoHoptionEnsemble.load(tmp_path)


def test_bad_input_is_refused(trained, data):
    ref, _ = data
    single, ensemble = trained
    with pytest.raises(ValueError, match="n_members must be a positive integer"):
        gh.model.GenoHoptionEnsemble(ref, n_members=0)
    with pytest.raises(TypeError, match="not a GenoHoptionModel"):
        gh.model.GenoHoptionEnsemble.from_models([single, "model"])
    with pytest.raises(ValueError, match="at least one model"):
        gh.model.GenoHoptionEnsemble.from_models([])
    with pytest.raises(ValueError, match="different cells"):
        gh.model.GenoHoptionEnsemble.from_models([single, _retrained(ref)]).calibrate()
    other = ref[ref.obs["bulk_labels"] != ref.obs["bulk_labels"].cat.categories[0]].copy()
    other.obs["bulk_labels"] = other.obs["bulk_labels"].astype(str).astype("category")
    gh.GenoHoptionModel.setup_anndata(other, labels_key="bulk_labels")
    with pytest.raises(ValueError, match="other cell types"):
        gh.model.GenoHoptionEnsemble.from_models([single, gh.GenoHoptionModel(other, **SMALL)])
    with pytest.raises(ValueError, match="calibrated ensemble"):
        gh.model.GenoHoptionEnsemble.from_models(ensemble.members).predict(unknown_threshold="calibrated")


def _retrained(ref):
    scvi.settings.seed = 11  # another split than the single model's
    ref = ref.copy()
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    model = gh.GenoHoptionModel(ref, **SMALL)
    model.train(**{**TRAIN, "max_epochs": 1})
    return model
