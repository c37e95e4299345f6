"""GEARS downloaders: pooch's cache on local files (no network: any download attempt fails the test)."""

from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pooch
import pytest

import genohoption as gh
from genohoption.datasets import _download


@pytest.fixture
def no_network(monkeypatch):
    def refuse(self, url, output_file, pooch_obj, check_only=False):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", refuse)


@pytest.fixture
def seeded_cache(tmp_path):
    """A cache holding norman.zip in GEARS' layout (norman/perturb_processed.h5ad and a side file)."""
    adata = gh.datasets.simulate_perturbation(n_genes=12, n_regulators=4, n_perturbed=3, n_combos=1, n_control=10,
                                              cells_per_condition=3, seed=0)
    h5ad = tmp_path / "perturb_processed.h5ad"
    adata.write_h5ad(h5ad)
    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / "norman.zip", "w") as zf:
        zf.write(h5ad, "norman/perturb_processed.h5ad")
        zf.writestr("norman/go.csv", "source,target\n")
    digest = hashlib.sha256((cache / "norman.zip").read_bytes()).hexdigest()
    return cache, adata, digest


def test_cached_archive_is_read_without_download(seeded_cache, monkeypatch, no_network):
    cache, adata, digest = seeded_cache
    record = _download.GEARS_DATASETS["norman2019"]
    monkeypatch.setitem(_download.GEARS_DATASETS, "norman2019", record._replace(known_hash=f"sha256:{digest}"))
    got = gh.datasets.norman2019(cache_dir=cache)
    assert got.shape == adata.shape and got.uns["read_gears"]["symbol_column"] == "gene_name"
    np.testing.assert_allclose(got.X.toarray(), adata.X.toarray())
    assert (cache / "norman" / "norman" / "perturb_processed.h5ad").is_file()  # extracted next to the archive
    again = gh.datasets.fetch_gears("norman2019", cache_dir=cache, drop_unmeasured=True)  # extracted files reused
    assert again.uns["read_gears"]["n_cells_dropped"] == 0


def test_hash_mismatch_downloads_again(seeded_cache, monkeypatch, no_network):
    cache, _, _ = seeded_cache
    record = _download.GEARS_DATASETS["adamson2016"]
    (cache / "adamson.zip").write_bytes((cache / "norman.zip").read_bytes())
    monkeypatch.setitem(_download.GEARS_DATASETS, "adamson2016", record._replace(known_hash="sha256:" + "0" * 64))
    with pytest.raises(AssertionError, match=r"tried to download https://dataverse\.harvard\.edu"):
        gh.datasets.adamson2016(cache_dir=cache)


def test_archive_without_h5ad_and_unknown_name(tmp_path, no_network):
    with zipfile.ZipFile(tmp_path / "replogle_k562_essential.zip", "w") as zf:
        zf.writestr("replogle_k562_essential/readme.txt", "nothing")
    with pytest.raises(FileNotFoundError, match=r"perturb_processed\.h5ad"):
        gh.datasets.replogle2022_k562_essential(cache_dir=tmp_path)
    with pytest.raises(KeyError, match="norman2019"):
        gh.datasets.fetch_gears("dixit", cache_dir=tmp_path)


# GEARS' PertData.load (snap-stanford/GEARS, gears/pertdata.py): Harvard Dataverse file ids and archive folders
REGISTRY = {
    "norman2019": ("https://dataverse.harvard.edu/api/access/datafile/6154020", "norman"),
    "adamson2016": ("https://dataverse.harvard.edu/api/access/datafile/6154417", "adamson"),
    "replogle2022_k562_essential": ("https://dataverse.harvard.edu/api/access/datafile/7458695",
                                    "replogle_k562_essential"),
}


def test_registry_urls_hashes_and_folders():
    assert set(_download.GEARS_DATASETS) == set(REGISTRY)
    for name, (url, folder) in REGISTRY.items():
        record = _download.GEARS_DATASETS[name]
        assert (record.url, record.folder) == (url, folder), name
        assert record.known_hash is None, name  # not pinned: pooch logs the SHA256 of what it downloads
        assert url in getattr(gh.datasets, name).__doc__, name  # the documented URL is the one fetched


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_dataset_fetches_its_registry_entry(name, tmp_path, monkeypatch):
    """What each public reader hands to pooch: URL, hash, archive name, cache folder, extraction folder."""
    calls = []
    h5ad = tmp_path / REGISTRY[name][1] / REGISTRY[name][1] / _download.GEARS_FILE

    def retrieve(url, known_hash=None, fname=None, path=None, processor=None, progressbar=False):
        calls.append({"url": url, "known_hash": known_hash, "fname": fname, "path": path,
                      "extract_dir": processor.extract_dir, "progressbar": progressbar})
        return [str(h5ad.with_name("go.csv")), str(h5ad)]

    monkeypatch.setattr(pooch, "retrieve", retrieve)
    monkeypatch.setattr(_download, "read_gears", lambda path, **kw: (path, kw))
    url, folder = REGISTRY[name]
    got = getattr(gh.datasets, name)(cache_dir=tmp_path, drop_unmeasured=True)
    assert got == (str(h5ad), {"drop_unmeasured": True})
    assert calls == [{"url": url, "known_hash": None, "fname": f"{folder}.zip", "path": tmp_path,
                      "extract_dir": folder, "progressbar": False}]
    gh.datasets.fetch_gears(name, cache_dir=tmp_path, known_hash="sha256:" + "1" * 64)
    assert calls[-1]["known_hash"] == "sha256:" + "1" * 64 and calls[-1]["url"] == url
