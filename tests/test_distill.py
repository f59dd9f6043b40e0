"""Zero-shot distillation: faithfulness of the loop, outputs, exact resume, errors."""

import dataclasses
import json
import logging
import shutil

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import (
    run_program,
    tiny_distill_config,
    tiny_teacher,
    user_error,
    weights_arrays,
    write_tiny_folder,
)
from zskt_tf import checkpoints, datasets, distill, model_io, networks, runs
from zskt_tf.errors import UserError
from zskt_tf.wide_resnet import check_taps_match, wide_resnet


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("distill"))


def _config(tiny, out, **overrides):
    values = dict(total_iterations=6, student_steps=2, eval_every=3)
    return tiny_distill_config(tiny, out, **(values | overrides))


def _seeds_config(tiny, tmp_path, name, **overrides):
    """A two-iteration config for distill() over several seeds, which reads the data
    itself (from the tiny folder, cached under tmp_path)."""
    root, _, _ = tiny
    return _config(
        tiny,
        tmp_path / name,
        total_iterations=2,
        data_dir=str(root),
        cache_dir=str(tmp_path / "cache"),
        **overrides,
    )


def test_cli_end_to_end_leaves_every_output(tmp_path, tiny):
    root, _, teacher_dir = tiny
    out = tmp_path / "zs"
    result = run_program(
        "zskt-tf-distill",
        f"--teacher={teacher_dir}",
        "--dataset=folder",
        f"--data_dir={root}",
        f"--cache_dir={tmp_path / 'c'}",
        "--student_depth=10",
        "--batch_size=8",
        "--z_dim=16",
        "--total_iterations=4",
        "--n_s=1",
        "--eval_every=2",
        "--seeds=0,1",
        f"--output_dir={out}",
        "--preset=budget",
        "--replay_size=64",
    )
    assert "zero-shot student test accuracy" in result.stdout
    # The preset's values replace the defaults; the flags given explicitly win.
    assert "preset budget, differs from the paper's settings in:" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert (config["total_iterations"], config["student_steps"]) == (4, 1)
    assert (config["replay_size"], config["replay_steps"]) == (64, 10)
    assert (config["bn_prior"], config["class_prior"]) == (10.0, 0.5)
    for seed in (0, 1):
        run = out / f"seed_{seed}"
        for name in (
            "student.weights.h5",
            "generator.weights.h5",
            "config.json",
            "results.json",
            "samples.png",
            "accuracy.png",
        ):
            assert (run / name).is_file(), (seed, name)
        results = json.loads((run / "results.json").read_text())
        assert [e["iteration"] for e in results["history"]] == [0, 2, 4]
        assert {"generator_loss", "teacher_max_prob", "student_max_prob"} <= set(
            results["history"][-1]
        )
        assert results["seconds_per_iteration"] > 0
    summary = json.loads((out / "results.json").read_text())
    finals = [summary["seeds"]["0"], summary["seeds"]["1"]]
    assert summary["test_accuracy_mean"] == pytest.approx(np.mean(finals))
    assert summary["test_accuracy_std"] == pytest.approx(np.std(finals))
    tags = set()
    for event_file in (out / "seed_0" / "logs").glob("events.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags |= {value.tag for value in event.summary.value}
    assert {
        "train/generator_loss",
        "train/student_lr",
        "test/accuracy",
        "train/teacher_max_prob",
        "pseudo_images",
    } <= tags
    # The student loads like any run directory and is the student that was evaluated.
    student = wide_resnet(10, 1, 3, (16, 16, 3))
    model_io.load_weights_checked(student, out / "seed_0" / "student.weights.h5", "s")


def test_stop_at_and_rerun_equal_an_uninterrupted_run(tmp_path, tiny):
    _, data, _ = tiny
    straight = _config(tiny, tmp_path / "straight", total_iterations=5)
    distill.distill_one_seed(straight, data)
    chunked = dataclasses.replace(
        straight, output_dir=str(tmp_path / "chunked"), stop_at=2
    )
    with pytest.raises(checkpoints.Interrupted, match="iteration 2/5"):
        distill.distill_one_seed(chunked, data)
    with pytest.raises(checkpoints.Interrupted, match="iteration 3/5"):
        distill.distill_one_seed(dataclasses.replace(chunked, stop_at=3), data)
    # A stopped run leaves a usable student and its pictures; rerunning with the same
    # --stop_at stops again at once without training further.
    for name in ("student.weights.h5", "generator.weights.h5", "samples.png"):
        assert (tmp_path / "chunked" / name).is_file()
    stopped = weights_arrays(tmp_path / "chunked" / "student.weights.h5")
    with pytest.raises(checkpoints.Interrupted, match="iteration 3/5"):
        distill.distill_one_seed(dataclasses.replace(chunked, stop_at=3), data)
    again = weights_arrays(tmp_path / "chunked" / "student.weights.h5")
    assert all(np.array_equal(stopped[k], again[k]) for k in stopped)
    resumed = distill.distill_one_seed(dataclasses.replace(chunked, stop_at=None), data)
    assert resumed["iterations"] == 5
    for name in ("student.weights.h5", "generator.weights.h5"):
        expected = weights_arrays(tmp_path / "straight" / name)
        actual = weights_arrays(tmp_path / "chunked" / name)
        for key in expected:
            np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
    straight_history = json.loads((tmp_path / "straight" / "history.json").read_text())
    assert resumed["history"] == straight_history


def test_the_seed_alone_determines_a_run(tmp_path, tiny):
    # distill() loads the teacher once for all seeds; each seed's run must equal the
    # same seed run on its own, and different seeds must start differently.
    _, data, _ = tiny
    config = _seeds_config(tiny, tmp_path, "both", eval_every=2)
    distill.distill(config, seeds=(0, 1))
    alone = dataclasses.replace(config, seed=1, output_dir=str(tmp_path / "alone"))
    distill.distill_one_seed(alone, data)
    seed_0, seed_1, seed_1_alone = (
        weights_arrays(tmp_path / run / "student.weights.h5")
        for run in ("both/seed_0", "both/seed_1", "alone")
    )
    for key in seed_1:
        np.testing.assert_array_equal(seed_1_alone[key], seed_1[key], err_msg=key)
    assert any(not np.array_equal(seed_0[k], seed_1[k]) for k in seed_0)


def test_stop_at_stops_every_seed_there(tmp_path, tiny, caplog):
    # --seeds=0,1 --stop_at=1 runs both seeds to iteration 1 (Colab chunks), not just
    # the first; the same command again trains nothing; without stop_at both finish.
    config = _seeds_config(tiny, tmp_path, "chunks", eval_every=1, stop_at=1)
    caplog.set_level(logging.INFO)

    def last_iterations():
        return [
            runs.read_json(tmp_path / "chunks" / f"seed_{s}" / "history.json")[-1][
                "iteration"
            ]
            for s in (0, 1)
        ]

    for _ in range(2):
        with pytest.raises(
            checkpoints.StoppedAt, match=r"iteration 1/2 \(seeds 0, 1\)"
        ):
            distill.distill(config, seeds=(0, 1))
        assert last_iterations() == [1, 1]
    # Each seed's progress line counted its ETA to the stop, once: the rerun trained
    # nothing.
    to_the_stop = [m for m in caplog.messages if "ETA" in m and "to the stop at 1" in m]
    assert len(to_the_stop) == 2, caplog.messages
    # One seed per call into the same directory (as in one Colab session each): a
    # seed stopped part-way is not counted, and a later call counts the seeds earlier
    # calls finished.
    finish = dataclasses.replace(config, stop_at=None)
    assert sorted(distill.distill(finish, seeds=(0,))["seeds"]) == ["0"]
    assert last_iterations() == [2, 1]
    summary = distill.distill(finish, seeds=(1,))
    assert last_iterations() == [2, 2]
    assert runs.read_json(tmp_path / "chunks" / "results.json") == summary
    finals = [
        runs.read_json(tmp_path / "chunks" / f"seed_{s}" / "results.json")[
            "test_accuracy"
        ]
        for s in (0, 1)
    ]
    assert summary["seeds"] == {"0": finals[0], "1": finals[1]}
    assert summary["test_accuracy_mean"] == pytest.approx(np.mean(finals))
    assert any("also counts seed 0, finished in" in m for m in caplog.messages)


def test_bad_input_is_caught_before_training(tmp_path, tiny):
    root, data, teacher_dir = tiny
    with pytest.raises(UserError, match="not found"):
        distill.distill_one_seed(
            _config(tiny, tmp_path / "a", teacher=str(tmp_path / "missing")), data
        )
    with pytest.raises(UserError, match="has no config.json"):
        distill.distill_one_seed(_config(tiny, tmp_path / "a", teacher=str(root)), data)
    # Weights that do not fit the recorded architecture.
    wrong = tmp_path / "wrong"
    shutil.copytree(teacher_dir, wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps(config | {"width": 1}))
    with pytest.raises(UserError, match="do not fit.*expected shape .*found"):
        distill.distill_one_seed(
            _config(tiny, tmp_path / "b", teacher=str(wrong)), data
        )
    # A dataset whose class count differs from the teacher's.
    four = datasets.load_dataset(
        "folder", write_tiny_folder(tmp_path / "four", 4), tmp_path / "c"
    )
    with pytest.raises(UserError, match="4 classes but the teacher predicts 3"):
        distill.distill_one_seed(_config(tiny, tmp_path / "d"), four)
    with pytest.raises(UserError, match="invalid Wide ResNet depth"):
        distill.distill_one_seed(_config(tiny, tmp_path / "e", student_depth=12), data)
    for name in "abde":
        assert not (tmp_path / name).exists()
    # A student whose taps cannot be matched.
    big = wide_resnet(10, 1, 3, (32, 32, 3))
    small = wide_resnet(10, 1, 3, (16, 16, 3))
    with pytest.raises(UserError, match="attention transfer needs matching taps"):
        check_taps_match(big, small)
    # Through the command line: one line, status 2.
    stderr = user_error(
        "zskt-tf-distill",
        f"--teacher={tmp_path / 'none'}",
        f"--output_dir={tmp_path / 'f'}",
    )
    assert "error:" in stderr and "not found" in stderr
    assert not (tmp_path / "f").exists()  # nothing is written for bad input
    # A flag value outside its choices: absl's parser, answered the same way.
    stderr = user_error(
        "zskt-tf-distill",
        "--teacher=embedded:cifar10-wrn-16-2",
        "--adversarial_loss=l2",
        f"--output_dir={tmp_path / 'g'}",
    )
    assert "error: flag --adversarial_loss=l2: value should be one of <kl|l1>" in stderr
    assert "FATAL" not in stderr and not (tmp_path / "g").exists()


def test_non_finite_loss_stops_with_a_clear_error(tmp_path, tiny):
    _, data, teacher_dir = tiny
    poisoned = tmp_path / "poisoned"
    shutil.copytree(teacher_dir, poisoned)
    with h5py.File(poisoned / "teacher.weights.h5", "r+") as file:
        kernel = file["layers/dense/vars/0"]
        kernel[...] = np.full(kernel.shape, np.nan, np.float32)
    out = tmp_path / "nan"
    with pytest.raises(UserError, match="non-finite loss at iteration 1"):
        distill.distill_one_seed(_config(tiny, out, teacher=str(poisoned)), data)
    assert not list((out / "checkpoints").glob("ckpt-*.index"))


def test_early_check_warns_at_forty_only_for_a_collapsed_window():
    def feed(kls, start=1):
        check = distill.EarlyCollapseCheck()
        messages = []
        for iteration, kl in enumerate(kls, start=start):
            values = {"train/generator_kl": kl, "train/teacher_max_prob": 0.999}
            messages.append(check.update(iteration, values))
        return messages

    # The 5-epoch teacher's shape: disagreement at first, near 0 from ~10 on.
    collapsed = feed([0.2] * 10 + [0.001] * 40)
    assert [i + 1 for i, m in enumerate(collapsed) if m] == [40]
    assert "KL(teacher || student) 0.0010" in collapsed[39]
    assert "--adversarial_loss=l1" in collapsed[39]
    # A healthy game (the authors' teacher dips to ~0.01 and recovers): no warning.
    assert not any(feed([0.2] * 10 + [0.01] * 10 + [0.05] * 30))
    # A run resumed inside the window cannot judge it and stays silent.
    assert not any(feed([0.001] * 20, start=31))


def test_a_run_recorded_before_new_options_existed_still_resumes(tmp_path, tiny):
    _, data, _ = tiny
    config = _config(tiny, tmp_path / "old", total_iterations=4, stop_at=2)
    with pytest.raises(checkpoints.Interrupted):
        distill.distill_one_seed(config, data)
    # An older version wrote config.json without the options added since.
    path = tmp_path / "old" / "config.json"
    recorded = json.loads(path.read_text())
    for key in ("adversarial_loss", "bn_prior", "balance_prior"):
        del recorded[key]
    path.write_text(json.dumps(recorded))
    resumed = distill.distill_one_seed(dataclasses.replace(config, stop_at=None), data)
    assert resumed["iterations"] == 4
    # A non-default value of such an option is a different run.
    with pytest.raises(UserError, match="bn_prior: 0.0 there, 1.0 now"):
        distill.distill_one_seed(dataclasses.replace(config, bn_prior=1.0), data)


def test_a_seed_directory_belongs_to_its_seed(tmp_path, tiny):
    _, data, _ = tiny
    config = _config(tiny, tmp_path / "one", total_iterations=2, eval_every=2)
    distill.distill_one_seed(config, data)
    with pytest.raises(UserError, match="seed: 0 there, 1 now"):
        distill.distill_one_seed(dataclasses.replace(config, seed=1), data)


def test_presets_name_settings_that_exist_and_validate(tiny, tmp_path):
    from zskt_tf import configs

    assert configs.preset("paper") == {} == configs.preset(None)
    for name in configs.PRESETS:
        _config(tiny, tmp_path / name, **configs.preset(name)).validate()
    with pytest.raises(UserError, match="unknown preset 'fast'; choose one of budget"):
        configs.preset("fast")
    import zskt_tf

    with pytest.raises(UserError, match="unknown preset 'fast'"):
        zskt_tf.distill(tiny[2], preset="fast", output_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()
    described = configs.preset_description("budget")
    assert "--n_s=2 (paper: 10)" in described and "--bn_prior=10.0" in described
    # Given with the run's config, it shows what the run uses, not the preset's.
    resumed = _config(
        tiny,
        tmp_path / "r4",
        **(configs.preset("budget") | {"replay_steps": 4, "replay_temperature": 4.0}),
    )
    described = configs.preset_description("budget", resumed)
    assert "--replay_steps=4 (paper: 0, given over the preset's 10)" in described
    assert "--n_s=2 (paper: 10)," in described
    # A method setting outside the preset, given by the user, is named too.
    assert described.endswith(", --replay_temperature=4.0 (paper: 1.0, given)")


def _trained(config, data, iterations):
    """A trainer after `iterations` iterations, and its live student's weights
    before the first and after each one."""
    from zskt_tf.zero_shot import ZeroShotTrainer

    trainer = ZeroShotTrainer(config, distill.check_inputs(config, data))
    live = [trainer.student.get_weights()]
    for step, z in enumerate(trainer.batches(0, iterations)):
        trainer.train_step(z, step)
        live.append(trainer.student.get_weights())
    return trainer, live


def test_the_averages_batch_norm_statistics_are_the_mean_of_batch_statistics():
    from zskt_tf.averaging import WeightAverage

    def build():
        return keras.Sequential(
            [
                keras.Input((3,)),
                keras.layers.BatchNormalization(momentum=0.8),
                keras.layers.Dense(2),
            ]
        )

    live = build()
    average = WeightAverage(live, build(), 0.5, refreshed=build())
    batches = np.random.default_rng(0).normal(2.0, 3.0, (5, 16, 3)).astype("float32")

    def run(model):
        for batch in batches:
            model(batch, training=True)
        return len(batches)

    kept = average.kept(run)
    norm = kept.layers[0]
    # 0.8^(n-k) weights, normalised: the mean of batch statistics, recent ones first.
    weights = 0.2 * 0.8 ** np.arange(len(batches))[::-1]
    weights /= weights.sum()
    np.testing.assert_allclose(
        norm.moving_mean.numpy(), weights @ batches.mean(1), rtol=1e-5
    )
    np.testing.assert_allclose(
        norm.moving_variance.numpy(), weights @ batches.var(1), rtol=1e-4
    )
    np.testing.assert_array_equal(
        kept.layers[1].kernel.numpy(), live.layers[1].kernel.numpy()
    )
    # Measured once per state of the average, and again after it moves.
    assert average.kept(lambda model: pytest.fail("measured twice")) is kept
    average.update()
    assert average.kept(run) is kept
    # Without BatchNorm there is nothing to measure: the average is kept as it is.
    dense = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    plain = WeightAverage(
        dense,
        keras.models.clone_model(dense),
        0.5,
        refreshed=keras.models.clone_model(dense),
    )
    assert plain.kept(lambda model: pytest.fail("nothing to measure")) is plain.model


def test_student_ema_averages_the_live_weights_and_leaves_training_alone(
    tmp_path, tiny
):
    _, data, _ = tiny
    plain = _config(tiny, tmp_path / "plain", student_steps=1)
    averaged = dataclasses.replace(plain, student_ema=0.6)
    _, live_plain = _trained(plain, data, 3)
    trainer, live = _trained(averaged, data, 3)
    # The average does not touch training: the live student is the plain run's.
    for before, after in zip(live_plain, live, strict=True):
        for a, b in zip(before, after, strict=True):
            np.testing.assert_array_equal(a, b)
    # average = 0.6 average + 0.4 live after each iteration, from the initial weights
    # (BatchNorm statistics included).
    expected = live[0]
    for weights in live[1:]:
        expected = [0.6 * e + 0.4 * w for e, w in zip(expected, weights, strict=True)]
    average = trainer.average.model.get_weights()
    assert len(average) == len(expected) > len(trainer.student.trainable_weights)
    for a, e in zip(average, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7)
    assert any(not np.allclose(a, w) for a, w in zip(average, live[-1], strict=True))
    # Evaluations report the kept student and the live student.
    values = trainer.evaluate(3)
    assert set(values) == {"test_accuracy", "test_accuracy_live"}
    # The kept student is the average with its BatchNorm statistics measured anew:
    # the average's trained weights, other statistics; the average is untouched.
    kept = trainer.kept_student
    assert kept is trainer.average.refreshed
    for mine, theirs in zip(
        kept.trainable_weights, trainer.average.model.trainable_weights, strict=True
    ):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    for a, e in zip(trainer.average.model.get_weights(), average, strict=True):
        np.testing.assert_array_equal(a, e)
    ema_stats = {w.path: w.numpy() for w in trainer.average.model.weights}
    for layer in networks.batch_norm_layers(kept).values():
        measured = layer.moving_mean
        assert not np.allclose(measured.numpy(), 0.0)
        assert not np.allclose(measured.numpy(), ema_stats[measured.path])
    # ...the kept figure is its: with the live weights set to it, the live figure
    # becomes what it scored.
    trainer.student.set_weights(kept.get_weights())
    assert trainer.evaluate(3)["test_accuracy_live"] == values["test_accuracy"]
    for decay in (1.0, -0.1):
        with pytest.raises(UserError, match=r"student_ema must be in \[0, 1\)"):
            dataclasses.replace(plain, student_ema=decay).validate()


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5])
def test_a_seed_out_of_range_is_one_line_before_anything_is_written(
    tiny, tmp_path, seed
):
    from zskt_tf import configs

    config = _seeds_config(tiny, tmp_path, "bad_seed")
    # NumPy's global seeding (keras.utils.set_random_seed) takes [0, 2**32) only.
    pattern = rf"each of --seeds must be an integer in \[0, 2\*\*32\), got {seed!r}"
    with pytest.raises(UserError, match=pattern):
        distill.distill(config, seeds=(0, seed))
    assert not (tmp_path / "bad_seed").exists()
    with pytest.raises(UserError, match=r"^seed must be an integer in \[0, 2\*\*32\)"):
        dataclasses.replace(config, seed=seed).validate()
    teacher = configs.TeacherConfig(output_dir=str(tmp_path / "teacher"), seed=seed)
    with pytest.raises(UserError, match=r"^seed must be an integer"):
        teacher.validate()
    for edge in (0, 2**32 - 1):  # the range's edges pass
        dataclasses.replace(config, seed=edge).validate()
