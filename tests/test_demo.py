"""The demo preset: what differs from the paper is stated, and only that differs."""

import dataclasses

from zskt_tf import demo, distill


def test_demo_differs_from_the_paper_only_where_it_says():
    config = demo.demo_config("runs/demo", seed=2)
    paper = distill.DistillConfig(teacher=config.teacher, output_dir="runs/demo")
    differences = {
        field.name
        for field in dataclasses.fields(config)
        if getattr(config, field.name) != getattr(paper, field.name)
    }
    assert differences == {
        "dataset",  # evaluation only: the embedded 2,000 test images
        "seed",
        "total_iterations",
        "schedule_iterations",
        "eval_every",
        "bn_prior",
    }
    assert config.seed == 2 and config.schedule_iterations == 80_000
    description = demo.preset_description()
    assert "--bn_prior=1" in description and "not in the paper" in description
    exact = demo.paper_exact_command("runs/demo", 2)
    assert "--bn_prior" not in exact and "--seeds=2" in exact
    assert "--schedule_iterations=80000" in exact
