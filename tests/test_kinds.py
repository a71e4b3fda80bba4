"""Members of other kinds: the seam (old manifests keep their identity)."""

from __future__ import annotations

from stage1_ensemble.ensemble import Manifest

OLD_MANIFEST = {"classes": ["DISEASE"], "data_hash": "abc", "planned": ["disease-x-f0"],
                "members": [{"name": "disease-x-f0", "entity_class": "DISEASE", "fold": 0,
                             "n_folds": 2, "encoder": "enc/x", "path": "disease-x-f0/model",
                             "tokenizer": "enc/x", "weight": 1.0, "config": {"max_steps": 10},
                             "validation": {"f1": 0.5}, "train_documents": 3}]}


def test_a_manifest_from_before_kinds_loads_as_binary_with_its_identity():
    """The identity (the caches' key) of a manifest written before members had kinds,
    as that version computed it: kinds must not make every cache miss."""
    manifest = Manifest.model_validate(OLD_MANIFEST)
    assert manifest.members[0].kind == "binary"
    assert manifest.identity() == "19dd4763473a7792"
    other = manifest.model_copy(deep=True)
    other.members[0].kind = "another"
    assert other.identity() != manifest.identity()
