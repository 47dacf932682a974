import numpy as np
from conftest import REPO
from sklearn.metrics import f1_score

import datagen
from settings import FEATURES
from training import train

PARAMS = {"C": 1.0, "max_iter": 1000, "class_weight": None, "random_state": 0}


def test_samples_are_the_committed_files(tmp_path):
    datagen.write_samples(tmp_path)
    for rel in datagen.samples():
        assert (tmp_path / rel).read_bytes() == (REPO / rel).read_bytes(), rel


def test_same_seed_same_rows():
    assert datagen.generate(50, seed=4).equals(datagen.generate(50, seed=4))
    assert not datagen.generate(50, seed=4).equals(datagen.generate(50, seed=5))


def test_relation_is_learnable_and_concept_drift_breaks_it():
    model = train(datagen.generate(2000, seed=1), PARAMS)
    test = datagen.generate(2000, seed=2)
    f1 = f1_score(test["exited"], model.predict(test[list(FEATURES)]))
    constant = f1_score(test["exited"], np.ones(len(test)))
    assert f1 > constant + 0.1
    drifted = datagen.generate(2000, seed=2, drift="concept", strength=0.75)
    assert f1_score(drifted["exited"], model.predict(drifted[list(FEATURES)])) < f1 - 0.3
