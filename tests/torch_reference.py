"""A small PyTorch reference of the authors' networks and zero-shot solver.

Written here from the paper's method (ZSKT, arXiv 1905.09768, Sec. 3, Algorithm 1),
the authors' published settings and the order of updates in their solver, so that
tests can hold zskt_tf against it: their WRN (with their state_dict key layout),
their generator and one outer iteration of their loop. Only the tests import this
module (PyTorch is not a dependency of zskt_tf).
"""

import contextlib
import math

import keras
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def float64():
    """Builds and runs Keras and PyTorch models in float64, then restores both."""
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    torch_default = torch.get_default_dtype()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
        torch.set_default_dtype(torch_default)


class Block(nn.Module):
    """A pre-activation block with the authors' attribute names."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = (
            None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        )

    def forward(self, x):
        activated = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(activated))))
        return (x if self.equal else self.convShortcut(activated)) + out


class Group(nn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                Block(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                for i in range(n)
            ]
        )

    def forward(self, x):
        return self.layer(x)


class TorchWRN(nn.Module):
    """WRN-depth-width returning (logits, block1, block2, block3), as theirs does."""

    def __init__(self, depth, width, classes=10, channels=3):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
        self.block1 = Group(n, widths[0], widths[1], 1)
        self.block2 = Group(n, widths[1], widths[2], 2)
        self.block3 = Group(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], classes)
        for module in self.modules():  # the authors' init
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1]
                fan_out *= module.out_channels
                module.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.Linear):
                module.bias.data.zero_()

    def forward(self, x):
        a1 = self.block1(self.conv1(x))
        a2 = self.block2(a1)
        a3 = self.block3(a2)
        pooled = F.adaptive_avg_pool2d(torch.relu(self.bn1(a3)), 1)
        return self.fc(pooled.flatten(1)), a1, a2, a3


def randomised_wrn(depth, width, seed=0):
    """A WRN in eval mode with non-trivial BN parameters and running statistics."""
    torch.manual_seed(seed)
    net = TorchWRN(depth, width)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


# 0.2 as TensorFlow's LeakyRelu op holds it (a float32 attribute); the same number in
# float32, and in float64 it keeps the reference bit-comparable with zskt_tf.
LEAKY_RELU_SLOPE = float(np.float32(0.2))


class TorchGenerator(nn.Module):
    """Their generator: Linear -> view (128, H/4, W/4) -> BN -> [up -> conv3x3 128 ->
    BN -> LeakyReLU(0.2)] -> [up -> conv3x3 64 -> BN -> LeakyReLU(0.2)] -> conv3x3 C
    -> BN (affine)."""

    def __init__(self, z_dim=100, size=32, channels=3):
        super().__init__()
        self.base = size // 4
        self.project = nn.Linear(z_dim, 128 * self.base**2)
        self.project_bn = nn.BatchNorm2d(128)
        self.conv1 = nn.Conv2d(128, 128, 3, 1, 1)
        self.conv1_bn = nn.BatchNorm2d(128)
        self.conv2 = nn.Conv2d(128, 64, 3, 1, 1)
        self.conv2_bn = nn.BatchNorm2d(64)
        self.to_image = nn.Conv2d(64, channels, 3, 1, 1)
        self.image_bn = nn.BatchNorm2d(channels, affine=True)

    def forward(self, z):
        x = self.project(z).view(-1, 128, self.base, self.base)
        x = self.project_bn(x)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.leaky_relu(self.conv1_bn(self.conv1(x)), LEAKY_RELU_SLOPE)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.leaky_relu(self.conv2_bn(self.conv2(x)), LEAKY_RELU_SLOPE)
        return self.image_bn(self.to_image(x))


def _conv_to_keras(weight):
    return weight.detach().numpy().transpose(2, 3, 1, 0)  # (o, i, h, w) -> (h, w, i, o)


def _bn_to_keras(bn):
    return [
        t.detach().numpy()
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)
    ]


def copy_generator_to_keras(torch_generator, keras_generator):
    """Gives a zskt_tf generator the weights of a TorchGenerator.

    The torch projection's outputs are (C, H, W)-ordered (its view), Keras' Reshape
    reads them as (H, W, C): the dense kernel's columns are permuted accordingly.
    """
    base = torch_generator.base
    order = np.arange(128 * base * base).reshape(128, base, base)
    order = order.transpose(1, 2, 0).reshape(-1)  # keras column k <- torch row order[k]
    weight = torch_generator.project.weight.detach().numpy()
    bias = torch_generator.project.bias.detach().numpy()
    keras_generator.get_layer("project").set_weights([weight.T[:, order], bias[order]])
    for name in ("conv1", "conv2", "to_image"):
        conv = getattr(torch_generator, name)
        keras_generator.get_layer(name).set_weights(
            [_conv_to_keras(conv.weight), conv.bias.detach().numpy()]
        )
    for name in ("project_bn", "conv1_bn", "conv2_bn", "image_bn"):
        layer = keras_generator.get_layer(name)
        layer.set_weights(_bn_to_keras(getattr(torch_generator, name)))


def _kl(student_logits, teacher_logits, temperature):
    # F.kl_div with its elementwise 'mean' (their default), as the authors'
    # divergence(); spelled out because that default now warns.
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.softmax(teacher_logits / temperature, dim=1),
        reduction="none",
    ).mean()


def _attention(x):
    return F.normalize(x.pow(2).mean(1).view(x.size(0), -1))


class AuthorsSolver:
    """The authors' optimisers, schedules and order of updates, one iteration a call.

    Adam (torch defaults), student lr and generator lr cosine-annealed to 0 over
    schedule_iterations and stepped once per outer iteration; clipping at norm 5.
    """

    def __init__(
        self,
        teacher,
        student,
        generator,
        *,
        student_lr=2e-3,
        generator_lr=1e-3,
        schedule_iterations=80_000,
        generator_steps=1,
        student_steps=10,
        beta=250.0,
        temperature=1.0,
    ):
        self.teacher, self.student, self.generator = teacher.eval(), student, generator
        self.student.train()
        self.generator.train()
        self.generator_steps, self.student_steps = generator_steps, student_steps
        self.beta, self.temperature = beta, temperature
        self.optimizer_student = torch.optim.Adam(student.parameters(), lr=student_lr)
        self.optimizer_generator = torch.optim.Adam(
            generator.parameters(), lr=generator_lr
        )
        self.schedulers = [
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, schedule_iterations)
            for optimizer in (self.optimizer_student, self.optimizer_generator)
        ]

    def iteration(self, z):
        """One outer iteration on the noise z; returns (generator loss, last student
        loss), the generator loss measured before its update."""
        for _ in range(self.generator_steps):
            pseudo = self.generator(z)
            student_logits, *_ = self.student(pseudo)
            teacher_logits, *_ = self.teacher(pseudo)
            generator_loss = -_kl(student_logits, teacher_logits, self.temperature)
            self.optimizer_generator.zero_grad()
            generator_loss.backward()
            nn.utils.clip_grad_norm_(self.generator.parameters(), 5)
            self.optimizer_generator.step()
        for step in range(self.student_steps):
            # They call the generator again for every student step (same z, so the
            # same images). The student loss's gradient then also reaches the
            # generator's parameters, but is zeroed before the generator's next step,
            # so it is not computed here. The teacher's outputs are computed once.
            with torch.no_grad():
                pseudo = self.generator(z)
                if step == 0:
                    teacher_logits, *teacher_taps = self.teacher(pseudo)
            student_logits, *student_taps = self.student(pseudo)
            student_loss = _kl(student_logits, teacher_logits, self.temperature)
            for student_tap, teacher_tap in zip(
                student_taps, teacher_taps, strict=True
            ):
                difference = _attention(student_tap) - _attention(teacher_tap)
                student_loss = student_loss + self.beta * difference.pow(2).mean()
            self.optimizer_student.zero_grad()
            student_loss.backward()
            nn.utils.clip_grad_norm_(self.student.parameters(), 5)
            self.optimizer_student.step()
        for scheduler in self.schedulers:
            scheduler.step()
        return generator_loss.item(), student_loss.item()
