"""Export the offensive-language model of ``alt-profanity-check`` to a plain-array file.

The package ships its model as joblib (pickle) files: loading them runs code, and needs
scikit-learn. This exporter loads them once, on a developer's machine, after checking
their SHA-256 against the digests pinned below, and writes the same model as arrays
(``numpy.savez``, read back with ``allow_pickle=False``): the TF-IDF vocabulary and idf
weights, and the five calibrated linear SVMs (weights, intercept, sigmoid ``a``/``b``).
:class:`~services.inference.guardrails.offensive.OffensiveLanguageGuard` computes
exactly the package's ``predict_prob`` from them (``tests/unit/test_guardrails.py``
compares the two on the labelled set), with neither pickle nor scikit-learn at run time.

Run (needs ``alt-profanity-check`` installed, as the test extra does)::

    python -m services.inference.guardrails.export
"""

from __future__ import annotations

import hashlib
import json
import sys
from importlib import metadata, resources
from pathlib import Path

import numpy as np

PACKAGE = "alt-profanity-check"
VERSION = "1.9.1"
# the files of alt-profanity-check 1.9.1 (its PyPI wheel), checked before unpickling
PINNED = {
    "model.joblib": "aeafc04849d4d93db4721cf30a86ebf22085595294b8a07d51918e7fa98f538b",
    "vectorizer.joblib": "19c5200dc6a41f026e0558e2f164f5fe8d8f58e502b46b37e4385037fcfa4831",
}
OUT = Path(__file__).parent / "data" / "offensive-linear.npz"


def _verified(name: str) -> Path:
    path = Path(str(resources.files("profanity_check") / "data" / name))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != PINNED[name]:
        raise SystemExit(f"{path}: sha256 {digest} is not the pinned {PINNED[name]}: refusing to unpickle it")
    return path


def export(out: Path = OUT) -> Path:
    if metadata.version(PACKAGE) != VERSION:
        raise SystemExit(f"{PACKAGE} {metadata.version(PACKAGE)} installed; this exporter pins {VERSION}")
    import joblib

    vectorizer = joblib.load(_verified("vectorizer.joblib"))
    model = joblib.load(_verified("model.joblib"))
    params = vectorizer.get_params()
    expected = {"lowercase": True, "ngram_range": (1, 1), "norm": "l2", "use_idf": True, "sublinear_tf": False}
    if {k: params[k] for k in expected} != expected or params["token_pattern"] != r"(?u)\b\w\w+\b":
        raise SystemExit(f"vectorizer parameters changed: {params}")
    if model.method != "sigmoid" or list(model.classes_) != [0, 1]:
        raise SystemExit("expected a sigmoid-calibrated binary classifier")
    vocab = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
    ccs = model.calibrated_classifiers_
    meta = {
        "source": f"{PACKAGE}=={VERSION}",
        "source_sha256": PINNED,
        "model": "TF-IDF (word unigrams, English stop words) + 5 sigmoid-calibrated LinearSVC, averaged",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        np.savez_compressed(
            f,
            vocabulary=np.array(vocab),
            idf=vectorizer.idf_.astype(np.float64),
            coef=np.vstack([c.estimator.coef_[0] for c in ccs]).astype(np.float64),
            intercept=np.array([c.estimator.intercept_[0] for c in ccs], dtype=np.float64),
            sigmoid_a=np.array([c.calibrators[0].a_ for c in ccs], dtype=np.float64),
            sigmoid_b=np.array([c.calibrators[0].b_ for c in ccs], dtype=np.float64),
            meta=np.array(json.dumps(meta, sort_keys=True)),
        )
    return out


if __name__ == "__main__":
    path = export(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
    print(f"{path}: sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")
