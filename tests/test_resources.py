"""Declared resources (issue 17): what each stage's workers and actors ask of a node comes from its config."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cxr_ray.config import ConfigError
from cxr_ray.resources import Resources, actor_pool_options, of, parse_custom, pool_size
from cxr_ray.study import plan
from cxr_ray.study.asks import StageAsk, stage_ask
from cxr_ray.study.layout import StudyLayout
from cxr_ray.study.profile import PROFILES, resolve_profile


def full_profile(**changes):
    return resolve_profile(replace(PROFILES["full"], data="/data/chest_xray", **changes))


@pytest.mark.parametrize("value, word", [
    ({"accelerator": "tpu"}, "accelerator"),
    ({"gpus": 0}, "gpus"),
    ({"custom": {"accel": -1}}, "custom"),
    ({"min_actors": 3, "max_actors": 2}, "min_actors"),
    ({"gpu": 1}, "unknown key"),
    ({"gpus": "one"}, "resources"),
])
def test_a_bad_declaration_is_one_line_naming_the_key(value, word):
    with pytest.raises(ConfigError, match=word):
        of(value)


def test_custom_resources_parse_from_the_command_line_form():
    assert parse_custom(("accel=1", "big_node=0.5")) == {"accel": 1.0, "big_node": 0.5}
    with pytest.raises(ConfigError, match="--custom-resources: expected NAME=AMOUNT"):
        parse_custom(("accel",))


def test_a_worker_bundle_is_what_it_declares_not_what_the_cluster_has():
    res = of({"accelerator": "gpu", "gpus": 1, "cpus": 4, "custom": {"accel": 1}})
    # No Ray is running: a declared accelerator never looks at the cluster.
    assert res.use_gpu() is True
    assert res.bundle(True, 1.0) == {"CPU": 4, "GPU": 1, "accel": 1.0}
    assert of({"accelerator": "cpu"}).bundle(False, 0.5) == {"CPU": 0.5}
    assert Resources().use_gpu() is None  # "auto": decided on the cluster


def test_the_full_profile_asks_every_stage_for_gpu_workers_and_the_quick_one_for_what_the_node_has():
    full = full_profile()
    layout = StudyLayout.at("/runs/study")
    declared = plan.declared(full)
    assert declared["accelerator"] == "gpu" and declared["gpus"] == 1 and declared["max_actors"] > declared["min_actors"]
    cfgs = [
        *plan.gan_configs(full, layout).values(), *plan.tune_configs(full, layout).values(),
        *plan.classifier_configs(full, layout, {}, None), plan.benign_config(full, layout),
        *plan.evaluate_configs(full, layout), plan.generalise_config(full, layout, None),
        plan.tamper_model_config(full, layout), plan.tamper_job_config(full, layout, "/runs/tamper"),
        plan.localiser_config(full, layout), plan.attack_config(full, layout, ["/runs/p"]),
        plan.claim_config(full, layout, ["/runs/f"], ["/runs/r"]),
        *[cfg for pair in plan.claim_trainings(full, layout, 250, None) for cfg in pair],
    ]
    assert cfgs and all(cfg.resources == declared for cfg in cfgs), [type(c).__name__ for c in cfgs if c.resources != declared]
    quick = resolve_profile(PROFILES["quick"])
    assert plan.declared(quick) is None  # "auto": the laptop's own node


def test_where_a_stage_runs_is_not_what_it_computes():
    """Stage hashes leave the resources out: the same study on GPUs or CPUs skips what it already has."""
    on_gpu, on_cpu = full_profile(), full_profile(accelerator="cpu", cpus_per_worker=2.0, pool_max=8)
    layout = StudyLayout.at("/runs/study")
    assert plan.train_hash(plan.classifier_configs(on_gpu, layout, {}, None), "g", "t") == \
        plan.train_hash(plan.classifier_configs(on_cpu, layout, {}, None), "g", "t")
    assert plan.tamper_hash(on_gpu, layout, "r", "b") == plan.tamper_hash(on_cpu, layout, "r", "b")
    assert plan.tune_configs(on_gpu, layout)["cnn"].name == plan.tune_configs(on_cpu, layout)["cnn"].name
    # Nor how many trainings the cluster fits side by side (the CPU share each gets): a study resumed on another
    # cluster, or planned by --dry-run, keeps its trainings.
    assert plan.train_hash(plan.classifier_configs(on_cpu, layout, {}, 0.5), "g", "t") == \
        plan.train_hash(plan.classifier_configs(on_cpu, layout, {}, None), "g", "t")
    assert plan.generalise_hash(plan.generalise_config(on_cpu, layout, 0.25), "g", "f", "b") == \
        plan.generalise_hash(plan.generalise_config(on_cpu, layout, None), "g", "f", "b")


def test_each_stage_says_what_it_asks_for(ray_local):
    full = full_profile()
    declared = plan.declared(full)
    train = stage_ask("train", full, declared, 4, None)
    assert train.text == "4 training(s) at once x 1 worker(s) of (4 CPU + 1 GPU)"
    assert train.bundles == [{"CPU": 4.0, "GPU": 1.0}] * 4
    generate = stage_ask("generate", full, declared, 4, None)
    assert generate.text == "an actor pool of 1-4 x (4 CPU + 1 GPU)" and len(generate.bundles) == 1
    assert stage_ask("report", full, declared, 4, None) == StageAsk("nothing: it runs in the driver", [])
    auto = stage_ask("train", resolve_profile(PROFILES["quick"]), None, 1, 0.5)
    assert auto.text == "1 training(s) at once x 1 worker(s) of (0.5 CPU) [auto: sized from the local node]"
    assert auto.bundles == []  # nothing asked of an autoscaler


@pytest.mark.parametrize("flag, value, word", [
    ("accelerator", "tpu", "--accelerator"), ("pool_max", 0, None), ("custom_resources", ("x",), "--custom-resources"),
])
def test_bad_study_resources_are_one_line_naming_the_option(flag, value, word):
    if word is None:
        full_profile(**{flag: value})  # 0: what fits
        return
    with pytest.raises(ConfigError, match=word):
        full_profile(**{flag: value})


def test_declared_actor_pools_are_elastic_and_ask_what_they_declare(ray_local):
    auto = actor_pool_options()  # one machine: a fixed pool of what is free now
    assert auto["compute"].min_size == auto["compute"].max_size >= 1
    declared = actor_pool_options(3, {"accelerator": "cpu", "cpus": 0.5, "min_actors": 1, "max_actors": 5})
    assert (declared["compute"].min_size, pool_size(declared), declared["num_cpus"], declared["num_gpus"]) == (1, 3, 0.5, 0)
    custom = actor_pool_options(None, {"accelerator": "cpu", "custom": {"accel": 1}, "min_actors": 2, "max_actors": 4})
    assert custom["resources"] == {"accel": 1.0} and (custom["compute"].min_size, pool_size(custom)) == (2, 4)


@pytest.mark.parametrize("free, actors, cpus, threads", [(2, 1, 1.0, "2"), (4, 3, 1.0, None), (8, 7, 1.0, None),
                                                         (1, 1, 0.5, None), (0.5, 1, 0.5, None)])
def test_an_auto_cpu_pool_leaves_a_cpu_to_ray_data_and_its_actors_use_every_free_core(free, actors, cpus, threads):
    from cxr_ray.resources import auto_cpu_pool

    high, options = auto_cpu_pool(free)
    assert (high, options["num_cpus"]) == (actors, cpus)
    assert options.get("runtime_env", {}).get("env_vars", {}).get("OMP_NUM_THREADS") == threads


def test_a_lone_auto_actor_scores_with_both_cores_of_a_two_cpu_node(ray_local):
    """Ray gives an actor of 1 CPU one PyTorch thread; the runtime env's OMP_NUM_THREADS is what the actor sees (the
    job's own env vars still reach it: Ray merges them; the S3 job study's actors read S3 with the job's keys)."""
    import os

    import ray

    from cxr_ray.resources import auto_cpu_pool

    class Threads:
        def __call__(self, batch):
            import torch

            return {"threads": [torch.get_num_threads()] * len(batch["id"]), "omp": [os.environ.get("OMP_NUM_THREADS")] * len(batch["id"])}

    _, options = auto_cpu_pool(2.0)
    rows = ray.data.range(4).map_batches(Threads, compute=ray.data.ActorPoolStrategy(size=1), **options).take_all()
    assert {(r["threads"], r["omp"]) for r in rows} == {(2, "2")}


def test_a_training_asking_for_a_resource_no_node_has_fails_in_seconds_naming_it(ray_local):
    from cxr_ray.train.launch import LaunchSpec, check_resources

    spec = LaunchSpec(name="x", storage=".", num_workers=1, resources=of({"accelerator": "cpu", "custom": {"accel": 1}}))
    with pytest.raises(ConfigError, match=r"1 CPU \+ 1 accel each can never run here.*short of accel"):
        check_resources(spec, False, fixed=True)
