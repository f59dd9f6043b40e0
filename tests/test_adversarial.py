"""The zero-shot iteration: updates, loss values against NumPy, the optional
generator priors and objectives, optimiser and schedule settings."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import tiny_teacher
from zskt_tf import adversarial, model_io, pixels
from zskt_tf.errors import UserError
from zskt_tf.generator import generator as build_generator
from zskt_tf.wide_resnet import wide_resnet


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("adversarial"))


def _config(**overrides):
    return adversarial.GameConfig(**({"student_steps": 2} | overrides))


def _networks(teacher_dir):
    """The frozen tiny teacher, a WRN-10-1 student, a generator and built optimisers."""
    frozen = model_io.load_teacher(teacher_dir)
    student = wide_resnet(10, 1, 3, (16, 16, 3))
    gen = build_generator(16, (16, 16, 3))
    optimizers = [adversarial.adam(lr, 5.0, False) for lr in (2e-3, 1e-3)]
    optimizers[0].build(student.trainable_variables)
    optimizers[1].build(gen.trainable_variables)
    return frozen, student, gen, optimizers


def _clone(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def test_iteration_updates_student_and_generator_never_the_teacher(tiny):
    _, _, teacher_dir = tiny
    config = _config(student_steps=3)
    frozen, student, gen, optimizers = _networks(teacher_dir)
    before = [[w.copy() for w in m.get_weights()] for m in (frozen, student, gen)]
    step = adversarial.make_iteration_fn(frozen, student, gen, *optimizers, config)
    for i in range(2):
        step(tf.random.normal((8, 16)), tf.constant(i, tf.int64))
    for old, new in zip(before[0], frozen.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)  # incl. BN moving statistics
    for name, model, old in (
        ("student", student, before[1]),
        ("generator", gen, before[2]),
    ):
        changed = [
            not np.array_equal(a, b)
            for a, b in zip(old, model.get_weights(), strict=True)
        ]
        assert np.mean(changed) > 0.9, name
    assert int(optimizers[0].iterations) == 6  # n_s = 3 student updates per iteration
    assert int(optimizers[1].iterations) == 2  # n_g = 1 generator update per iteration


def _np_losses(t_out, s_out, beta):
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    def attention(a):
        e = (a.astype(np.float64) ** 2).mean(-1).reshape(len(a), -1)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    log_t, log_s = (
        log_softmax(t_out["logits"].numpy()),
        log_softmax(s_out["logits"].numpy()),
    )
    kl = (np.exp(log_t) * (log_t - log_s)).mean()
    at = sum(
        ((attention(s_out[k].numpy()) - attention(t_out[k].numpy())) ** 2).mean()
        for k in ("block1", "block2", "block3")
    )
    return kl, at, kl + beta * at


def test_logged_loss_terms_match_the_reference_formulas(tiny):
    _, _, teacher_dir = tiny
    config = _config(student_steps=1)
    frozen, student, gen, optimizers = _networks(teacher_dir)
    student_before, gen_before = _clone(student), _clone(gen)
    z = tf.random.normal((8, 16))
    values = adversarial.make_iteration_fn(frozen, student, gen, *optimizers, config)(
        z, tf.constant(0, tf.int64)
    )
    # Generator step: -KL on the generator's images before its update.
    images = gen_before(z, training=True)
    t_out, s_out = frozen(images, training=False), student_before(images, training=True)
    kl, _, _ = _np_losses(t_out, s_out, 250.0)
    assert float(values["train/generator_loss"]) == pytest.approx(-kl, rel=1e-4)
    probs = tf.nn.softmax(t_out["logits"]).numpy().max(-1).mean()
    assert float(values["train/teacher_max_prob"]) == pytest.approx(probs, rel=1e-4)
    # Student step: KL + 250 * attention on the updated generator's images, same z.
    images = gen(z, training=True)
    t_out, s_out = frozen(images, training=False), student_before(images, training=True)
    kl, at, total = _np_losses(t_out, s_out, 250.0)
    assert float(values["train/kl"]) == pytest.approx(kl, rel=1e-4)
    assert float(values["train/attention"]) == pytest.approx(at, rel=1e-4)
    assert float(values["train/student_loss"]) == pytest.approx(total, rel=1e-4)


def test_adam_clips_by_global_norm_five_with_torch_epsilon():
    variable = tf.Variable(tf.zeros([4]))
    optimizer = adversarial.adam(1e-3, 5.0, False)
    assert optimizer.epsilon == 1e-8 and optimizer.global_clipnorm == 5.0
    optimizer.build([variable])
    optimizer.apply([tf.constant([60.0, 80.0, 0.0, 0.0])], [variable])  # norm 100
    first_moment = optimizer.variables[2]  # after iterations and learning_rate
    # m = (1 - beta_1) * clipped gradient = 0.1 * (3, 4, 0, 0).
    np.testing.assert_allclose(first_moment.numpy(), [0.3, 0.4, 0.0, 0.0], rtol=1e-5)


def test_schedule_iterations_sets_the_cosine_period(tiny):
    _, _, teacher_dir = tiny
    frozen, student, gen, optimizers = _networks(teacher_dir)
    config = _config(total_iterations=10, schedule_iterations=40, student_steps=1)
    step = adversarial.make_iteration_fn(frozen, student, gen, *optimizers, config)
    step(tf.random.normal((8, 16)), tf.constant(20, tf.int64))
    # Halfway through a 40-iteration cosine: half the initial learning rates.
    assert float(optimizers[0].learning_rate) == pytest.approx(1e-3, rel=1e-5)
    assert float(optimizers[1].learning_rate) == pytest.approx(5e-4, rel=1e-5)
    with pytest.raises(UserError, match="schedule_iterations"):
        _config(total_iterations=10, schedule_iterations=5).validate()


def test_teacher_with_batchnorm_inputs_is_the_same_forward_pass(tiny):
    _, _, teacher_dir = tiny
    frozen = model_io.load_teacher(teacher_dir)
    model, layers = adversarial.with_batchnorm_inputs(frozen)
    assert not model.trainable and not model.trainable_weights
    bn_layers = [
        layer
        for layer in frozen.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    # WRN-10: one block per group, two BNs per block, and the head's BN.
    assert layers == bn_layers and len(layers) == 7
    images = tf.random.normal((4, 16, 16, 3))
    outputs = model(images, training=False)
    np.testing.assert_array_equal(
        outputs["logits"], frozen(images, training=False)["logits"]
    )
    probe = keras.Model(frozen.input, [layer.input for layer in layers])
    for layer, expected in zip(layers, probe(images, training=False), strict=True):
        actual = outputs[adversarial.BN_INPUT_PREFIX + layer.name]
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


def _np_bn_loss(bn_inputs, layers):
    total = 0.0
    for x, layer in zip(bn_inputs, layers, strict=True):
        flat = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
        total += np.linalg.norm(flat.var(0) - layer.moving_variance.numpy())
        total += np.linalg.norm(flat.mean(0) - layer.moving_mean.numpy())
    return total


def _one_iteration(teacher_dir, config):
    """One iteration's logged values, with the networks before and after it."""
    frozen, student, gen, optimizers = _networks(teacher_dir)
    student_before, gen_before = _clone(student), _clone(gen)
    z = tf.random.normal((8, 16))
    values = adversarial.make_iteration_fn(frozen, student, gen, *optimizers, config)(
        z, tf.constant(0, tf.int64)
    )
    assert set(values) == set(config.metric_tags())
    return values, z, frozen, gen, student_before, gen_before


def test_priors_and_l1_objective_against_numpy(tiny):
    _, _, teacher_dir = tiny
    config = _config(
        student_steps=1, adversarial_loss="l1", bn_prior=0.5, balance_prior=2.0
    )
    values, z, frozen, gen, student_before, gen_before = _one_iteration(
        teacher_dir, config
    )
    # Generator step, on the generator's images before its update.
    images = gen_before(z, training=True)
    with_inputs, layers = adversarial.with_batchnorm_inputs(frozen)
    t_out = with_inputs(images, training=False)
    s_out = student_before(images, training=True)
    t_logits, s_logits = t_out["logits"].numpy(), s_out["logits"].numpy()
    l1 = np.abs(t_logits - s_logits).mean()
    bn = _np_bn_loss(
        [t_out[adversarial.BN_INPUT_PREFIX + x.name] for x in layers], layers
    )
    mean_p = tf.nn.softmax(t_logits).numpy().mean(0)
    balance = (mean_p * np.log(mean_p)).sum()
    kl, _, _ = _np_losses(t_out, s_out, 250.0)
    assert float(values["train/bn_loss"]) == pytest.approx(bn, rel=1e-4)
    assert float(values["train/balance_loss"]) == pytest.approx(balance, rel=1e-4)
    assert float(values["train/generator_kl"]) == pytest.approx(kl, rel=1e-4)
    assert float(values["train/generator_loss"]) == pytest.approx(
        -l1 + 0.5 * bn + 2.0 * balance, rel=1e-4
    )
    # Student step: L1 + beta * attention on the updated generator's images; the
    # KL is still logged.
    images = gen(z, training=True)
    t_out, s_out = frozen(images, training=False), student_before(images, training=True)
    kl, attention, _ = _np_losses(t_out, s_out, 250.0)
    l1 = np.abs(t_out["logits"].numpy() - s_out["logits"].numpy()).mean()
    assert float(values["train/kl"]) == pytest.approx(kl, rel=1e-4)
    assert float(values["train/student_loss"]) == pytest.approx(
        l1 + 250.0 * attention, rel=1e-4
    )


def test_tv_prior_against_numpy(tiny):
    _, _, teacher_dir = tiny
    config = _config(student_steps=1, tv_prior=0.7)
    values, z, frozen, _, student_before, gen_before = _one_iteration(
        teacher_dir, config
    )
    assert "train/tv_loss" in values
    images = np.asarray(gen_before(z, training=True), np.float64)
    tv = np.abs(np.diff(images, axis=1)).mean() + np.abs(np.diff(images, axis=2)).mean()
    t_out = frozen(images.astype(np.float32), training=False)
    s_out = student_before(images.astype(np.float32), training=True)
    kl, _, _ = _np_losses(t_out, s_out, 250.0)
    assert float(values["train/tv_loss"]) == pytest.approx(tv, rel=1e-4)
    assert float(values["train/generator_loss"]) == pytest.approx(
        -kl + 0.7 * tv, rel=1e-4
    )


def test_paper_defaults_and_bad_options():
    paper = adversarial.GameConfig()
    assert (paper.adversarial_loss, paper.bn_prior, paper.balance_prior) == (
        "kl",
        0.0,
        0.0,
    )
    assert paper.metric_tags() == adversarial.METRICS
    with pytest.raises(UserError, match="adversarial_loss must be one of kl, l1"):
        _config(adversarial_loss="js").validate()
    with pytest.raises(UserError, match="bn_prior must be >= 0"):
        _config(bn_prior=-1.0).validate()
    assert paper.tv_prior == 0.0
    with pytest.raises(UserError, match="tv_prior must be >= 0"):
        _config(tv_prior=-0.5).validate()


def test_xla_steps_compute_the_same_iteration(tiny):
    _, _, teacher_dir = tiny
    z = tf.random.normal((8, 16))
    results = []
    for jit in (False, True):
        keras.utils.set_random_seed(3)
        frozen, student, gen, optimizers = _networks(teacher_dir)
        step = adversarial.make_iteration_fn(
            frozen, student, gen, *optimizers, _config(jit=jit)
        )
        results.append(step(z, tf.constant(0, tf.int64)))
    plain, compiled = results
    # The generator step's values come from one forward pass from equal weights.
    for tag in ("train/generator_loss", "train/teacher_max_prob"):
        assert float(compiled[tag]) == pytest.approx(float(plain[tag]), rel=1e-4)
    assert set(compiled) == set(plain)


def test_mixed_precision_keeps_statistics_and_losses_in_float32(tiny):
    from zskt_tf.training import mixed_precision_scope

    _, _, teacher_dir = tiny
    with mixed_precision_scope(True):
        frozen = model_io.load_teacher(teacher_dir)
        student = wide_resnet(10, 1, 3, (16, 16, 3))
        gen = build_generator(16, (16, 16, 3))
    assert keras.config.dtype_policy().name == "float32"  # restored after
    optimizers = [adversarial.adam(lr, 5.0, True) for lr in (2e-3, 1e-3)]
    optimizers[0].build(student.trainable_variables)
    optimizers[1].build(gen.trainable_variables)
    conv = student.get_layer("group1_block0_conv1")
    assert conv.compute_dtype == "float16" and conv.kernel.dtype == "float32"
    assert student.output["logits"].dtype == gen.output.dtype == "float32"
    bn = student.get_layer("group1_block0_1_bn")
    assert bn.moving_mean.dtype == bn.moving_variance.dtype == "float32"
    values = adversarial.make_iteration_fn(
        frozen, student, gen, *optimizers, _config()
    )(tf.random.normal((8, 16)), tf.constant(0, tf.int64))
    for tag, value in values.items():
        assert value.dtype == tf.float32 and np.isfinite(float(value)), tag


@pytest.mark.skipif(
    bool(tf.config.list_logical_devices("GPU")), reason="a GPU is present"
)
def test_jit_and_mixed_precision_are_refused_without_an_accelerator():
    from zskt_tf.training import check_accelerator_options

    check_accelerator_options(jit=False, mixed_precision=False)
    with pytest.raises(UserError, match="--jit .* rerun without --jit"):
        check_accelerator_options(jit=True, mixed_precision=False)
    with pytest.raises(UserError, match="--mixed_precision .* needs a GPU"):
        check_accelerator_options(jit=False, mixed_precision=True)


def test_clip_images_keeps_pseudo_images_in_the_pixel_range(tiny):
    _, _, teacher_dir = tiny
    frozen, student, gen, optimizers = _networks(teacher_dir)
    scale = pixels.parse("0,255", 3)
    low, high = scale.pixel_bounds()
    assert low == (0.0,) * 3 and high == (255.0,) * 3
    assert pixels.parse("-1,1", 1).pixel_bounds() == ((-1.0,), (1.0,))
    standard = pixels.standardising((0.5, 0.25, 0.0), (0.5, 0.25, 0.1))
    np.testing.assert_allclose(standard.pixel_bounds(), [(-1, -1, 0), (1, 3, 10)])
    z = tf.random.normal((8, 16), seed=3)
    games = [
        adversarial.AdversarialGame(
            frozen,
            student,
            gen,
            *optimizers,
            _config(clip_images=clip),
            input_map=scale.generator_map(),
            input_bounds=scale.pixel_bounds() if clip else None,
        )
        for clip in (False, True)
    ]
    unbounded, clipped = (game.images(z).numpy() for game in games)
    # The standardised images, read as pixels of mean 0.5 and std 0.25, spill over
    # [0, 255] at +-2 standard deviations; clipping cuts exactly those.
    assert unbounded.min() < 0 and unbounded.max() > 255
    np.testing.assert_allclose(clipped, np.clip(unbounded, 0, 255), rtol=1e-6)
    assert 0.0 < np.mean((clipped == 0) | (clipped == 255)) < 0.2


def test_image_stats_read_the_generators_images_with_the_given_statistics():
    scale = pixels.parse("0,1", 1)
    # By default a range reads them as pixels of mean 0.5, std 0.25.
    assert scale.generator_map() == ((0.25,), (0.5,))
    stated = pixels.with_image_stats(scale, "mean=0.2:std=0.3")
    assert stated.mean == scale.mean and stated.std == scale.std  # the teacher's
    np.testing.assert_allclose(stated.generator_map(), [(0.3,), (0.2,)])
    # A standardising convention given its own statistics stays the identity.
    standard = pixels.standardising((0.4, 0.5, 0.6), (0.2, 0.2, 0.3))
    spec = "mean=0.4,0.5,0.6:std=0.2,0.2,0.3"
    assert pixels.with_image_stats(standard, spec).identity
    with pytest.raises(
        UserError, match="--image_stats: mean has 2 values for 3 channels"
    ):
        pixels.with_image_stats(standard, "mean=0.4,0.5:std=0.2")
