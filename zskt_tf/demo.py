"""The offline demo preset: a short zero-shot run from the embedded CIFAR-10 teacher."""

from __future__ import annotations

from zskt_tf.distill import DistillConfig

TEACHER = "embedded:cifar10-wrn-16-2"
DATASET = "embedded:cifar10-test-2k"

# The first 120 iterations of the paper's 80,000-iteration schedule, at the paper's
# batch of 128: about 8 minutes on 2 CPU cores. Only the run length differs from the
# paper; the method and its learning rates are unchanged. (A cosine schedule squeezed
# into 120-240 iterations learnt less: see docs/RESULTS.md.)
PRESET = dict(
    batch_size=128, total_iterations=120, schedule_iterations=80_000, eval_every=20
)

PAPER_COMMAND = (
    "zskt-tf-teacher --dataset=cifar10 --depth=40 --width=2 "
    "--output_dir=runs/wrn-40-2\n"
    "zskt-tf-distill --teacher=runs/wrn-40-2 --student_depth=16 --student_width=1 "
    "--n_s=10 --n_g=1 --seeds=0,1,2 --output_dir=runs/zskt-40-2-to-16-1"
)


def preset_description() -> str:
    paper = DistillConfig(teacher="", output_dir="")
    return (
        f"DEMO PRESET (not the paper's settings): the first "
        f"{PRESET['total_iterations']} of the paper's "
        f"{PRESET['schedule_iterations']:,} iterations (same batch "
        f"{paper.batch_size} and learning-rate schedules, so the student is far from "
        f"trained), evaluation every {PRESET['eval_every']} iterations on 2,000 "
        "CIFAR-10 test images. Everything else is the paper's: n_g=1, n_s=10, Adam "
        "2e-3/1e-3, beta 250, clipping 5, WRN-16-2 teacher -> WRN-16-1 student."
    )


def demo_config(output_dir: str) -> DistillConfig:
    return DistillConfig(
        teacher=TEACHER, output_dir=output_dir, dataset=DATASET, **PRESET
    )
