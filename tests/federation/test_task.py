"""The reference task: deterministic splits and a non-IID partitioner."""

from __future__ import annotations

import numpy as np
import pytest

from federation.task import dirichlet_partition, load_split


def test_split_is_deterministic_and_disjoint():
    a, b = load_split(0), load_split(0)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    total = len(a.y_train) + len(a.y_val) + len(a.y_test)

    assert total == 1797
    assert (len(a.y_train), len(a.y_val), len(a.y_test)) == (1168, 270, 359)
    assert a.x_train.dtype == np.float32
    assert a.x_train.shape[1:] == (1, 8, 8)
    assert a.x_train.min() >= 0.0
    assert a.x_train.max() <= 1.0


def test_other_seed_gives_other_split():
    assert not np.array_equal(load_split(0).y_test, load_split(1).y_test)


@pytest.mark.parametrize("clients", [2, 10, 50])
def test_partition_covers_every_sample_once(clients):
    labels = load_split(0).y_train
    parts = dirichlet_partition(labels, clients, alpha=0.5, seed=3)

    assert len(parts) == clients
    assert all(len(p) > 0 for p in parts)
    merged = np.concatenate(parts)
    assert sorted(merged.tolist()) == list(range(len(labels)))


def _mean_label_entropy(labels, parts):
    entropies = []
    for p in parts:
        counts = np.bincount(labels[p], minlength=10) / len(p)
        counts = counts[counts > 0]
        entropies.append(float(-(counts * np.log(counts)).sum()))
    return float(np.mean(entropies))


def test_small_alpha_is_more_skewed_than_large_alpha():
    labels = load_split(0).y_train
    skewed = _mean_label_entropy(labels, dirichlet_partition(labels, 10, alpha=0.1, seed=0))
    iid_like = _mean_label_entropy(labels, dirichlet_partition(labels, 10, alpha=100.0, seed=0))

    assert skewed < iid_like - 0.5
    assert iid_like > 0.9 * np.log(10)


def test_partition_rejects_impossible_requests():
    with pytest.raises(ValueError, match="cannot feed"):
        dirichlet_partition(np.zeros(3, int), 5, alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(np.zeros(30, int), 5, alpha=0.0)


def test_a_device_supplies_its_own_data_through_the_provider_hook(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from federation.client_app import load_node_data
    from federation.settings import FederationSettings

    (tmp_path / "my_device_data.py").write_text(
        "import numpy as np\ndef load():\n    return np.ones((7, 1, 8, 8)), np.arange(7) % 10\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    context = SimpleNamespace(node_config={"data-provider": "my_device_data:load"})
    x, y, partition = load_node_data(context, FederationSettings())
    assert x.shape == (7, 1, 8, 8)
    assert x.dtype == np.float32
    assert y.dtype == np.int64
    assert partition == -1

    context = SimpleNamespace(node_config={"partition-id": 2, "num-partitions": 4})
    _, y2, partition = load_node_data(context, FederationSettings())
    assert partition == 2
    assert 0 < len(y2) < 1168


def test_a_teacher_pulls_the_student_towards_its_answers():
    import torch

    from federation.task import DEVICE_WIDTH, DigitsCNN, predict_logits, set_seed, train

    split = load_split(0)
    x, y = split.x_train[:256], split.y_train[:256]
    set_seed(0)
    teacher = DigitsCNN(width=DEVICE_WIDTH).eval()  # untrained: its answers are far from the labels

    def student(**kwargs: object) -> np.ndarray:
        set_seed(1)
        model = DigitsCNN(width=DEVICE_WIDTH)
        train(model, x, y, epochs=3, lr=3e-3, **kwargs)
        return predict_logits(model, x).argmax(axis=1)

    teacher_labels = predict_logits(teacher, x).argmax(axis=1)
    taught = student(teacher=teacher, distill_weight=0.9, distill_temperature=1.0)
    alone = student()
    assert (taught == teacher_labels).mean() > (alone == teacher_labels).mean()
    assert torch.is_grad_enabled()
