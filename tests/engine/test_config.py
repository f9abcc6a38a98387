"""Configs are validated on construction with messages that name field, value and allowed set."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptychodus_pinn.engine.config import (
    ExecutionConfig,
    ModelConfig,
    Preset,
    Scheduler,
    TrainingConfig,
    model_config_from_dict,
    preset_configs,
    to_dict,
)


@pytest.mark.parametrize(
    ("factory", "field", "value", "fragment"),
    [
        (ExecutionConfig, "accelerator", "tpu", "auto, cpu, gpu, cuda, mps"),
        (ExecutionConfig, "scheduler", "linear", "constant, exponential, cosine, plateau"),
        (ExecutionConfig, "precision", "64", "32, 16-mixed, bf16-mixed"),
        (ExecutionConfig, "logger", "wandb", "csv, tensorboard, mlflow, none"),
        (ExecutionConfig, "learning_rate", -1.0, "(0, 1]"),
        (ExecutionConfig, "num_workers", -2, "0..1024"),
        (ExecutionConfig, "devices", 0, "'auto', an integer in 1..4096"),
        (ExecutionConfig, "checkpoint_monitor", "accuracy", "val_loss"),
        (ExecutionConfig, "inference_batch_size", 0, "integer in 1..1000000"),
        (ModelConfig, "N", 100, "crop or bin"),
        (ModelConfig, "gridsize", 0, "1..4"),
        (ModelConfig, "amp_activation", "relu", "sigmoid, softplus, silu"),
        (ModelConfig, "loss", "l2", "poisson, mae"),
        (TrainingConfig, "epochs", 0, "1..1000000"),
        (TrainingConfig, "validation_fraction", 0.7, "[0, 0.5)"),
    ],
)
def test_invalid_values_name_field_value_and_allowed_set(factory, field, value, fragment):
    with pytest.raises(ValueError) as caught:
        factory(**{field: value})
    message = str(caught.value)
    assert field in message and repr(value) in message and fragment in message


def test_worker_options_need_workers():
    with pytest.raises(ValueError, match="persistent_workers"):
        ExecutionConfig(persistent_workers=True, num_workers=0)
    with pytest.raises(ValueError, match="prefetch_factor"):
        ExecutionConfig(prefetch_factor=2, num_workers=0)
    assert ExecutionConfig(prefetch_factor=2, num_workers=1, persistent_workers=True).prefetch_factor == 2


def test_strings_become_enums_and_configs_are_frozen():
    config = ExecutionConfig(scheduler="plateau")
    assert config.scheduler is Scheduler.PLATEAU
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3  # type: ignore[misc]


def test_model_config_round_trips_through_a_plain_dict():
    config = ModelConfig(N=128, gridsize=2, amp_activation="softplus", probe_trainable=True)
    assert model_config_from_dict(to_dict(config)) == config
    with pytest.raises(ValueError, match="unknown fields"):
        model_config_from_dict({**to_dict(config), "attention": True})


def test_presets_are_narrow_on_cpu_and_wide_on_gpu():
    cpu_model, cpu_training = preset_configs(Preset.CPU)
    gpu_model, gpu_training = preset_configs("gpu")
    assert cpu_model.n_filters_scale < gpu_model.n_filters_scale
    assert cpu_training.epochs < gpu_training.epochs


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([f.name for f in dataclasses.fields(ExecutionConfig)]),
        st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8)),
        max_size=6,
    )
)
def test_fuzzed_execution_configs_raise_only_value_errors(values):
    with contextlib.suppress(ValueError):
        ExecutionConfig(**values)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([f.name for f in dataclasses.fields(ModelConfig)]),
        st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True), st.text(max_size=8)),
        max_size=6,
    )
)
def test_fuzzed_model_configs_raise_only_value_errors(values):
    with contextlib.suppress(ValueError):
        ModelConfig(**values)
