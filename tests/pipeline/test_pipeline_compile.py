"""The compiled pipelines (training and batch prediction): the checked-in YAML is current, parses strictly into kfp's
protobufs, and carries the GPU, node pool, resource, retry, caching and Secret settings; the components are an
interface plus one call."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from components.base import IMAGE
from pipelines import batch_pipeline
from pipelines.compile import BATCH_PACKAGE, DEFAULT_PACKAGE, compile_pipeline
from pipelines.training_pipeline import GPU_STEPS, RESOURCES, ClusterSettings, Toleration, parse_node_selector
from rakuten_cli.pipeline import main as cli_main
from rakuten_mm.errors import ConfigError

pytestmark = [pytest.mark.pipeline, pytest.mark.unit]

STEPS = ("preprocess", "train-lstm", "train-vgg16", "fit-ensemble", "evaluate", "register", "deploy")
BATCH_STEPS = ("prepare-batch", "predict-shard", "merge-predictions")


def _strict(obj: dict[str, Any], message: Any) -> Any:
    return json_format.ParseDict(obj, message, ignore_unknown_fields=False)


def _load(path: Path) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(PipelineSpec, executor name → ExecutorSpec dict, executor name → kubernetes config dict), parsed strictly."""
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 2, "pipeline spec + platform spec"
    spec = _strict(docs[0], pipeline_spec_pb2.PipelineSpec())
    platform = _strict(docs[1], pipeline_spec_pb2.PlatformSpec())
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    for body in executors.values():
        _strict(body, pipeline_spec_pb2.PipelineDeploymentConfig.ExecutorSpec())
    k8s = json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec)["executors"]
    return spec, executors, {name: _strict(body, k8s_pb2.KubernetesExecutorConfig()) for name, body in k8s.items()}


@pytest.fixture(scope="module")
def checked_in() -> tuple[Any, dict[str, Any], dict[str, Any]]:
    return _load(DEFAULT_PACKAGE)


def test_checked_in_yaml_is_what_the_code_compiles(tmp_path: Path) -> None:
    fresh = compile_pipeline(tmp_path / "training.yaml")
    assert fresh.read_text() == DEFAULT_PACKAGE.read_text(), "pipelines/training.yaml is stale: run `make compile`"


def test_components_and_typed_artifacts(checked_in: tuple[Any, dict[str, Any], dict[str, Any]]) -> None:
    spec, _, _ = checked_in
    assert {f"comp-{s}" for s in STEPS} <= set(spec.components)

    def artifact_types(component: str, side: str) -> dict[str, str]:
        defs = getattr(spec.components[f"comp-{component}"], side).artifacts
        return {name: d.artifact_type.schema_title for name, d in defs.items()}

    assert artifact_types("preprocess", "output_definitions") == {"dataset": "system.Dataset"}
    assert artifact_types("train-lstm", "output_definitions") == {"model": "system.Model", "metrics": "system.Metrics"}
    assert artifact_types("fit-ensemble", "output_definitions") == {"bundle": "system.Model",
                                                                   "metrics": "system.Metrics"}
    assert artifact_types("evaluate", "output_definitions") == {"metrics": "system.Metrics",
                                                               "confusion": "system.ClassificationMetrics",
                                                               "evaluation": "system.Artifact"}
    assert artifact_types("register", "output_definitions") == {"report": "system.HTML", "metrics": "system.Metrics"}
    assert "registered_model" in spec.components["comp-evaluate"].input_definitions.parameters
    params = set(spec.root.input_definitions.parameters)
    assert {"data_uri", "bundle_uri", "epochs_text", "epochs_image", "image_size", "image_weights", "seed",
            "mlflow_tracking_uri", "mlflow_experiment", "min_improvement", "deploy", "canary_percent"} <= params
    outputs = set(spec.root.output_definitions.parameters)
    assert {"promoted", "decision", "challenger_weighted_f1", "champion_weighted_f1", "gate_confidence"} <= outputs


def test_gpu_node_pool_resources_retries_and_caching(checked_in: tuple[Any, dict[str, Any], dict[str, Any]]) -> None:
    spec, executors, k8s = checked_in
    for step in STEPS:
        container = executors[f"exec-{step}"]["container"]
        assert container["image"] == IMAGE
        assert not any("pip install" in part for part in container["command"])
        resources = container["resources"]
        assert (resources["resourceCpuRequest"], resources["resourceMemoryRequest"]) == RESOURCES[step]
        if step in GPU_STEPS:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "1"
            config = k8s[f"exec-{step}"]
            assert dict(config.node_selector.labels) == {"nvidia.com/gpu.present": "true"}
            assert [(t.key, t.operator, t.effect) for t in config.tolerations] == [
                ("nvidia.com/gpu", "Exists", "NoSchedule")]
        else:
            assert "accelerator" not in resources
            assert not k8s.get(f"exec-{step}", k8s_pb2.KubernetesExecutorConfig()).tolerations
    tasks = dict(spec.root.dag.tasks)
    assert tasks["train-lstm"].retry_policy.max_retry_count == 2
    assert tasks["train-vgg16"].retry_policy.max_retry_count == 2
    assert not tasks["preprocess"].HasField("retry_policy")
    assert all(not task.caching_options.enable_cache for task in tasks.values() if task.HasField("caching_options"))


def test_credentials_come_from_the_secret(checked_in: tuple[Any, dict[str, Any], dict[str, Any]]) -> None:
    _, _, k8s = checked_in
    for step in STEPS[:-1]:
        required, optional = k8s[f"exec-{step}"].secret_as_env
        assert required.secret_name_parameter.runtime_value.constant.string_value == "rakuten-pipeline"
        assert [m.env_var for m in required.key_to_env] == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        assert not required.optional and optional.optional
        assert "MLFLOW_TRACKING_URI" in [m.env_var for m in optional.key_to_env]
    assert "exec-deploy" not in k8s  # deploy talks to the Kubernetes API as the run's service account


def test_deploy_runs_only_when_asked_and_champion_moved(
        checked_in: tuple[Any, dict[str, Any], dict[str, Any]]) -> None:
    spec, _, _ = checked_in
    outer = spec.root.dag.tasks["condition-1"]
    assert outer.trigger_policy.condition == "inputs.parameter_values['pipelinechannel--deploy'] == true"
    inner = spec.components[outer.component_ref.name].dag.tasks["condition-2"]
    assert "register-promoted" in inner.trigger_policy.condition
    assert "deploy" in spec.components[inner.component_ref.name].dag.tasks


def test_compile_options_change_only_the_node_pool_settings(tmp_path: Path) -> None:
    out = tmp_path / "custom.yaml"
    assert cli_main(["pipeline", "compile", "--out", str(out), "--gpu-node-selector",
                     "cloud.google.com/gke-accelerator=nvidia-l4", "--gpu-toleration", "dedicated=gpu:NoExecute",
                     "--secret", "team-creds", "--image", "registry.local/rakuten-pipeline:dev"]) == 0
    _, executors, k8s = _load(out)
    config = k8s["exec-train-vgg16"]
    assert dict(config.node_selector.labels) == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert [(t.key, t.operator, t.value, t.effect) for t in config.tolerations] == [
        ("dedicated", "Equal", "gpu", "NoExecute")]
    assert config.secret_as_env[0].secret_name_parameter.runtime_value.constant.string_value == "team-creds"
    assert {e["container"]["image"] for e in executors.values()} == {"registry.local/rakuten-pipeline:dev"}

    cpu = tmp_path / "cpu.yaml"
    compile_pipeline(cpu, ClusterSettings(gpu=False))
    _, executors, k8s = _load(cpu)
    assert all("accelerator" not in e["container"]["resources"] for e in executors.values())
    assert all(not c.tolerations and not c.node_selector.labels for c in k8s.values())
    assert all(c.secret_as_env for name, c in k8s.items())


@pytest.mark.parametrize(("text", "expected"), [
    ("nvidia.com/gpu:NoSchedule", Toleration("nvidia.com/gpu", "NoSchedule")),
    ("dedicated=gpu:NoExecute", Toleration("dedicated", "NoExecute", "gpu")),
    ("a=b=c:PreferNoSchedule", Toleration("a", "PreferNoSchedule", "b=c")),
])
def test_toleration_flags(text: str, expected: Toleration) -> None:
    assert Toleration.parse(text) == expected


@pytest.mark.parametrize("text", ["nvidia.com/gpu", "key:Sometimes", ":NoSchedule", "key=:NoSchedule"])
def test_bad_toleration_flags_name_the_format(text: str) -> None:
    with pytest.raises(ConfigError, match=r"KEY\[=VALUE\]:EFFECT with EFFECT one of"):
        Toleration.parse(text)


@pytest.mark.parametrize("text", ["pool", "=gpu", "pool="])
def test_bad_node_selector_flags(text: str) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_node_selector(text)


def test_cpu_only_and_gpu_flags_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--cpu-only"):
        cli_main(["compile", "--out", str(tmp_path / "x.yaml"), "--cpu-only", "--gpu-node-selector", "a=b"])


def test_component_bodies_are_imports_plus_one_call() -> None:
    import components.deploy
    import components.evaluate
    import components.fit_ensemble
    import components.merge_predictions
    import components.predict_shard
    import components.prepare_batch
    import components.preprocess
    import components.register
    import components.train_member

    modules = [components.preprocess, components.train_member, components.fit_ensemble,
               components.evaluate, components.register, components.deploy, components.prepare_batch,
               components.predict_shard, components.merge_predictions]
    for module in modules:
        (component,) = [v for v in vars(module).values() if hasattr(v, "python_func")]
        assert component.component_spec.implementation.container.image == IMAGE
        func = ast.parse(inspect.getsource(component.python_func)).body[0]
        assert isinstance(func, ast.FunctionDef)
        body = [s for s in func.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        imports = [s for s in body if isinstance(s, ast.ImportFrom)]
        assert {i.module.split(".")[0] for i in imports if i.module} <= {"rakuten_mm", "rollout"}, module
        calls = [s for s in body if not isinstance(s, ast.ImportFrom)]
        assert len(calls) <= 2 and not any(isinstance(s, ast.If | ast.For | ast.While | ast.Try) for s in calls)


# ---- the batch prediction pipeline ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batch_checked_in() -> tuple[Any, dict[str, Any], dict[str, Any]]:
    return _load(BATCH_PACKAGE)


def test_checked_in_batch_yaml_is_what_the_code_compiles(tmp_path: Path) -> None:
    fresh = compile_pipeline(tmp_path / "batch.yaml", pipeline="batch-prediction")
    assert fresh.read_text() == BATCH_PACKAGE.read_text(), (
        "pipelines/batch_prediction.yaml is stale: run `rakuten pipeline compile --pipeline batch-prediction`")


def test_batch_pipeline_fans_out_over_the_shards_and_merges_them(
        batch_checked_in: tuple[Any, dict[str, Any], dict[str, Any]]) -> None:
    spec, _, _ = batch_checked_in
    assert spec.pipeline_info.name == batch_pipeline.PIPELINE_NAME
    params = spec.root.input_definitions.parameters
    assert {"data_uri", "predictions_uri", "model", "shards", "device", "on_bad_rows", "on_missing_image",
            "mlflow_tracking_uri"} == set(params)
    assert params["model"].default_value.string_value == "models:/rakuten-product-classifier@champion"
    assert params["shards"].default_value.number_value == batch_pipeline.DEFAULT_SHARDS
    assert {"predictions", "predictions_uri", "rows", "bundle_sha256", "model"} == (
        set(spec.root.output_definitions.parameters) | set(spec.root.output_definitions.artifacts))
    tasks = dict(spec.root.dag.tasks)
    (loop,) = [t for t in tasks.values() if t.task_info.name == "shards"]  # the dsl.ParallelFor
    assert loop.parameter_iterator.items.input_parameter == "pipelinechannel--prepare-batch-Output"
    inner = spec.components[loop.component_ref.name].dag.tasks
    assert set(inner) == {"predict-shard"}
    merge = tasks["merge-predictions"]
    collected = merge.inputs.artifacts["shard_predictions"].task_output_artifact
    assert tasks[collected.producer_task] == loop
    assert collected.output_artifact_key == "pipelinechannel--predict-shard-predictions"
    assert set(merge.dependent_tasks) == {"prepare-batch", collected.producer_task}
    shard_input = spec.components["comp-merge-predictions"].input_definitions.artifacts["shard_predictions"]
    assert shard_input.is_artifact_list and shard_input.artifact_type.schema_title == "system.Dataset"
    assert all(not task.caching_options.enable_cache for task in (*tasks.values(), *inner.values())
               if task.HasField("caching_options"))


def test_batch_shards_run_on_the_gpu_pool_and_every_step_reads_the_secret(
        batch_checked_in: tuple[Any, dict[str, Any], dict[str, Any]]) -> None:
    spec, executors, k8s = batch_checked_in
    for step in BATCH_STEPS:
        container = executors[f"exec-{step}"]["container"]
        assert container["image"] == IMAGE
        resources = container["resources"]
        assert (resources["resourceCpuRequest"], resources["resourceMemoryRequest"]) == batch_pipeline.RESOURCES[step]
        config = k8s[f"exec-{step}"]
        required, optional = config.secret_as_env
        assert required.secret_name_parameter.runtime_value.constant.string_value == "rakuten-pipeline"
        assert not required.optional and optional.optional
        if step == "predict-shard":
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "1"
            assert dict(config.node_selector.labels) == {"nvidia.com/gpu.present": "true"}
            assert [(t.key, t.operator, t.effect) for t in config.tolerations] == [
                ("nvidia.com/gpu", "Exists", "NoSchedule")]
        else:
            assert "accelerator" not in resources and not config.tolerations
    (loop,) = [t for t in spec.root.dag.tasks.values() if t.task_info.name == "shards"]
    shard = spec.components[loop.component_ref.name].dag.tasks["predict-shard"]
    assert shard.retry_policy.max_retry_count == 2


def test_compile_options_apply_to_the_batch_pipeline_too(tmp_path: Path) -> None:
    out = tmp_path / "batch-cpu.yaml"
    assert cli_main(["compile", "--pipeline", "batch-prediction", "--out", str(out), "--cpu-only",
                     "--secret", "team-creds", "--image", "registry.local/rakuten-pipeline:dev"]) == 0
    _, executors, k8s = _load(out)
    assert all("accelerator" not in e["container"]["resources"] for e in executors.values())
    assert all(not c.tolerations and not c.node_selector.labels for c in k8s.values())
    assert {c.secret_as_env[0].secret_name_parameter.runtime_value.constant.string_value
            for c in k8s.values()} == {"team-creds"}
    assert {e["container"]["image"] for e in executors.values()} == {"registry.local/rakuten-pipeline:dev"}
