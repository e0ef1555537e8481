"""End-to-end baseline training: it learns, it is deterministic, and its records are consistent."""

import flax.linen as nn
import numpy as np
import optax

from flax_cronos.baseline import train_end_to_end
from flax_cronos.data.synthetic import teacher_classes
from flax_cronos.models import MLP, TwoLayerHead


class Network(nn.Module):
    @nn.compact
    def __call__(self, x):
        return TwoLayerHead(width=16, outputs=1)(MLP(widths=(32,))(x))


def run(seed=0):
    x, y = teacher_classes(1200, dim=8, num_classes=2, seed=0)
    x = x.astype(np.float32)
    return train_end_to_end(Network(), optax.adam(1e-2), (x[:1000], y[:1000]), (x[1000:], y[1000:]),
                            steps=150, batch_size=50, eval_every=50, seed=seed)[1]


def test_adam_learns_the_teacher_and_repeats_exactly():
    history = run()
    assert [record["step"] for record in history] == [50, 100, 150]
    assert history[-1]["val_accuracy"] > 0.75           # the majority class is 54%
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    seconds = [record["seconds"] for record in history]
    assert all(later > earlier for earlier, later in zip(seconds, seconds[1:]))
    again = run()
    assert [r["val_accuracy"] for r in again] == [r["val_accuracy"] for r in history]
    assert [r["train_loss"] for r in again] == [r["train_loss"] for r in history]


def test_only_the_selected_parameters_train_from_the_given_start():
    import jax

    x, y = teacher_classes(300, dim=8, num_classes=2, seed=0)
    x = x.astype(np.float32)
    start = Network().init(jax.random.key(5), x[:1])["params"]
    params, _ = train_end_to_end(Network(), optax.adam(1e-2), (x[:200], y[:200]), (x[200:], y[200:]),
                                 steps=20, batch_size=50, eval_every=20, params=start,
                                 trainable="^TwoLayerHead_0/")
    np.testing.assert_array_equal(params["MLP_0"]["Dense_0"]["kernel"],
                                  start["MLP_0"]["Dense_0"]["kernel"])
    head, trained = start["TwoLayerHead_0"], params["TwoLayerHead_0"]
    assert all(not np.array_equal(trained[layer]["kernel"], head[layer]["kernel"]) for layer in head)
