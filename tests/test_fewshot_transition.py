"""Few-shot baselines and transition curves / MTE."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import run_program, tiny_teacher, user_error
from zskt_tf import datasets, fewshot, losses, model_io, transition
from zskt_tf.errors import UserError
from zskt_tf.wide_resnet import wide_resnet


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_teacher(
        tmp_path_factory.mktemp("fewshot"), epochs=4, test_per_class=12, lr=0.05
    )


def _config(tmp_path, name, **overrides):
    values = (
        dict(
            output_dir=str(tmp_path / name),
            dataset="folder",
            m_per_class=3,
            student_depth=10,
            student_width=1,
            reference_epochs=2,
            batch_size=4,
            eval_every=3,
        )
        | overrides
    )
    return fewshot.FewShotConfig(**values)


def test_fewshot_sees_m_per_class_and_scales_steps(tmp_path, tiny):
    _, data, teacher_dir = tiny
    results = fewshot.train_fewshot(
        _config(tmp_path, "kd", teacher=str(teacher_dir)), data
    )
    assert results["subset_size"] == 9 and results["method"] == "kd_at"
    # Steps of a 2-epoch run on the 24 training images at batch 4: 2 * 6 = 12.
    assert results["steps"] == 12
    assert results["epochs"] == pytest.approx(12 / 3)  # 3 batches per subset epoch
    config = json.loads((tmp_path / "kd" / "config.json").read_text())
    assert config["subset_size"] == 9
    images, labels = datasets.few_shot_subset(
        data.train_images, data.train_labels, 3, 0
    )
    np.testing.assert_array_equal(np.bincount(labels), [3, 3, 3])
    plain = fewshot.train_fewshot(_config(tmp_path, "ce"), data)
    assert plain["method"] == "no_teacher"
    # A budget that ends inside an epoch: 24 images at batch 5 give 5 steps for one
    # reference epoch, while the 9-image subset has 2 batches per epoch.
    uneven = fewshot.train_fewshot(
        _config(tmp_path, "uneven", batch_size=5, reference_epochs=1), data
    )
    assert uneven["steps"] == 5 and uneven["history"][-1]["step"] == 5


def test_kd_at_loss_fn_matches_the_formula(tiny):
    _, data, teacher_dir = tiny
    frozen = model_io.load_teacher(teacher_dir)
    student = wide_resnet(10, 1, 3, (16, 16, 3))
    images = tf.random.normal((4, 16, 16, 3))
    labels = tf.constant([0, 1, 2, 0], tf.int64)
    outputs = student(images, training=True)
    value = fewshot.kd_at_loss_fn(frozen, 0.9, 4.0, 1000.0)(images, labels, outputs)
    t_out = frozen(images, training=False)
    taps = ("block1", "block2", "block3")
    ce = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=outputs["logits"]
        )
    )
    kl = losses.kl_divergence(t_out["logits"], outputs["logits"], 4.0)
    at = sum(losses.attention_loss(outputs[k], t_out[k]) for k in taps)
    expected = 0.1 * ce + 2 * 0.9 * 16 * kl + 1000 * at
    assert float(value) == pytest.approx(float(expected), rel=1e-5)


def test_fine_tuning_starts_from_the_given_student(tmp_path, tiny):
    _, data, teacher_dir = tiny
    base = fewshot.train_fewshot(_config(tmp_path, "base", reference_epochs=1), data)
    assert base["steps"] == 6
    config = _config(
        tmp_path,
        "ft",
        init_student=str(tmp_path / "base"),
        teacher=str(teacher_dir),
        stop_at=1,
    )
    from zskt_tf import checkpoints

    with pytest.raises(checkpoints.Interrupted):
        fewshot.train_fewshot(config, data)
    bad = _config(tmp_path, "ft2", init_student=str(tmp_path / "base"), student_width=2)
    with pytest.raises(UserError, match="--init_student is WRN-10-1"):
        fewshot.train_fewshot(bad, data)


def test_fewshot_bad_input(tmp_path, tiny):
    _, data, _ = tiny
    with pytest.raises(UserError, match="m_per_class=9 exceeds the 8 training images"):
        fewshot.train_fewshot(_config(tmp_path, "m", m_per_class=9), data)


def test_mte_of_a_net_against_itself_is_zero_and_attack_raises_p(tmp_path, tiny):
    _, data, teacher_dir = tiny
    net = model_io.load_teacher(teacher_dir)
    curves = transition.transition_curves(
        net, net, data.test_images, data.test_labels, data.info, n_images=6, steps=5
    )
    assert curves["mte"] == 0.0
    assert curves["p_a"].shape == (6, 2, 5)
    # Targets are the other classes, (label + 1 + i) mod C.
    np.testing.assert_array_equal(curves["targets"][:, 0], (curves["labels"] + 1) % 3)
    assert (curves["targets"] != curves["labels"][:, None]).all()
    # Gradient steps towards j raise p_j of the attacked net: no curve falls, and all
    # but saturated ones (p_j ~ 1e-12, vanishing gradient) rise.
    first, last = curves["p_a"][..., 0], curves["p_a"][..., -1]
    assert (last >= first - 1e-6).all()
    assert np.mean(last[first > 1e-6] > first[first > 1e-6]) == 1.0
    assert last.mean() > first.mean()
    other = wide_resnet(10, 1, 3, (16, 16, 3))
    mixed = transition.transition_curves(
        net, other, data.test_images, data.test_labels, data.info, n_images=2, steps=3
    )
    assert mixed["mte"] > 0


def test_transition_bad_input(tiny):
    _, data, teacher_dir = tiny
    net = model_io.load_teacher(teacher_dir)

    def curves(net_a, net_b, n_images=2, seed=0):
        return transition.transition_curves(
            net_a,
            net_b,
            data.test_images,
            data.test_labels,
            data.info,
            n_images=n_images,
            steps=2,
            seed=seed,
        )

    with pytest.raises(UserError, match=r"only \d+ of 36 test images .*500 needed"):
        curves(net, net, n_images=500)
    gray = wide_resnet(10, 1, 3, (16, 16, 1))
    with pytest.raises(UserError, match="different inputs"):
        curves(net, gray)
    with pytest.raises(UserError, match="test images are"):
        curves(gray, gray)
    four = wide_resnet(10, 1, 4, (16, 16, 3))
    with pytest.raises(UserError, match="different class counts: 3 vs 4"):
        curves(net, four)
    with pytest.raises(UserError, match=r"seed must be .*\[0, 2\*\*32\), got -1"):
        curves(net, net, seed=-1)


def test_transition_cli_writes_curves_results_and_plot(tmp_path, tiny):
    root, _, teacher_dir = tiny
    out = tmp_path / "tr"
    result = run_program(
        "zskt-tf-transition",
        f"--net_a={teacher_dir}",
        f"--net_b={teacher_dir}",
        "--dataset=folder",
        f"--data_dir={root}",
        f"--cache_dir={tmp_path / 'c'}",
        "--n_images=4",
        "--steps=3",
        f"--output_dir={out}",
    )
    assert "MTE 0.0000" in result.stdout
    assert json.loads((out / "results.json").read_text())["mte"] == 0.0
    with np.load(out / "curves.npz") as curves:
        assert curves["p_a"].shape == (4, 2, 3)
    png = (out / "transition.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    refused = tmp_path / "refused"
    stderr = user_error(
        "zskt-tf-transition",
        f"--net_a={teacher_dir}",
        f"--net_b={teacher_dir}",
        "--seed=-1",
        f"--output_dir={refused}",
    )
    assert "--seed must be an integer in [0, 2**32), got -1" in stderr
    assert not refused.exists()
