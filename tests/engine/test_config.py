"""Configs are validated on construction, from their fields' metadata, with messages that name field, value and allowed set."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptychodus_pinn.engine.config import (
    CONFIG_CLASSES,
    RUN_FIELD_OF,
    SECTION_CONFIG,
    ConfigError,
    ExecutionConfig,
    Knob,
    ModelConfig,
    MonitoredLoss,
    Preset,
    RefinementConfig,
    RunConfig,
    Scheduler,
    Section,
    TrainingConfig,
    all_knobs,
    knob_of,
    knobs,
    model_config_from_dict,
    preset_configs,
    to_dict,
)


@pytest.mark.parametrize(
    ("factory", "field", "value", "fragment"),
    [
        (ExecutionConfig, "accelerator", "tpu", "auto, cpu, gpu, cuda, mps"),
        (TrainingConfig, "scheduler", "linear", "constant, exponential, cosine, plateau"),
        (ExecutionConfig, "precision", "64", "32, 16-mixed, bf16-mixed"),
        (ExecutionConfig, "logger", "wandb", "csv, tensorboard, mlflow, none"),
        (TrainingConfig, "learning_rate", -1.0, "(0, 1]"),
        (ExecutionConfig, "num_workers", -2, "0..1024"),
        (ExecutionConfig, "devices", 0, "'auto', an integer in 1..4096"),
        (TrainingConfig, "checkpoint_monitor", "accuracy", "val_loss"),
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
    config = TrainingConfig(scheduler="plateau", checkpoint_monitor="train_loss")
    assert config.scheduler is Scheduler.PLATEAU and config.checkpoint_monitor is MonitoredLoss.TRAIN_LOSS
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


@pytest.mark.parametrize("config_class", [ExecutionConfig, TrainingConfig, RefinementConfig])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_fuzzed_configs_raise_only_config_errors(config_class, data):
    values = data.draw(
        st.dictionaries(
            st.sampled_from([f.name for f in dataclasses.fields(config_class)]),
            st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8)),
            max_size=6,
        )
    )
    with contextlib.suppress(ConfigError):
        config_class(**values)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([f.name for f in dataclasses.fields(ModelConfig)]),
        st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True), st.text(max_size=8)),
        max_size=6,
    )
)
def test_fuzzed_model_configs_raise_only_config_errors(values):
    with contextlib.suppress(ConfigError):
        ModelConfig(**values)


# ------------------------------------------------------------------- the metadata drives validation


def test_every_field_is_a_knob_with_label_help_and_the_section_of_its_config():
    for config_class in CONFIG_CLASSES:
        described = knobs(config_class)
        assert [knob.name for knob in described] == [f.name for f in dataclasses.fields(config_class)]
        for knob in described:
            assert knob.label and knob.label[0].isupper() and not knob.label.endswith(":"), knob
            assert len(knob.help) > 20 and knob.help.endswith("."), knob
            assert SECTION_CONFIG[knob.section] is config_class and knob.config == config_class.__name__
            assert knob.run_field == RUN_FIELD_OF[config_class] and hasattr(RunConfig(), knob.run_field)
            assert knob.default == getattr(config_class(), knob.name)
            assert knob.optional == (knob.default is None) or knob.name == "checkpoint_monitor"
            assert knob.none_means is None or knob.optional
            if knob.cli_flag is not None:
                assert knob.cli_flag.startswith("--") and "_" not in knob.cli_flag
    assert all_knobs()[0].section is Section.MODEL and len(set(Section)) == len(CONFIG_CLASSES)


def test_cli_flags_are_unique_within_a_run_config():
    flags = [knob.cli_flag for knob in all_knobs() if knob.cli_flag is not None]
    assert len(flags) == len(set(flags))


def _numeric(knob: Knob) -> bool:
    return knob.value_type in (int, float) and knob.custom_check is None and not knob.choices


def _base(config_class: type) -> dict:
    """Values that let every other field take its extremes: workers for the worker options, neighbours for a large grid."""
    return {ExecutionConfig: {"num_workers": 1}, ModelConfig: {"neighbor_count": 15}}.get(config_class, {})


@pytest.mark.parametrize("knob", [knob for knob in all_knobs() if _numeric(knob)], ids=lambda knob: knob.name)
def test_bounds_come_from_the_knob(knob):
    config_class = {cls.__name__: cls for cls in CONFIG_CLASSES}[knob.config]
    base = _base(config_class)
    step = 1 if knob.value_type is int else 1e-9
    assert knob.minimum is not None
    low = knob.minimum + (step if knob.exclusive_minimum else 0)
    assert getattr(config_class(**{**base, knob.name: low}), knob.name) == low
    outside = [knob.minimum if knob.exclusive_minimum else knob.minimum - step]
    if knob.maximum is not None:
        high = knob.maximum - (step if knob.exclusive_maximum else 0)
        assert getattr(config_class(**{**base, knob.name: high}), knob.name) == high
        outside.append(knob.maximum if knob.exclusive_maximum else knob.maximum + step)
    if knob.value_type is int:
        outside += [1.5, True, "3"]
    else:
        outside += [float("nan"), float("inf"), "0.5"]
    for value in outside:
        with pytest.raises(ConfigError) as caught:
            config_class(**{**base, knob.name: value})
        error = caught.value
        assert (error.config, error.field, error.value, error.allowed) == (knob.config, knob.name, value, knob.allowed)
        assert str(error) == f"{knob.config}.{knob.name}={value!r} is not allowed; it must be {knob.allowed}"


@pytest.mark.parametrize("knob", [knob for knob in all_knobs() if knob.choices], ids=lambda knob: knob.name)
def test_choices_come_from_the_knob(knob):
    config_class = {cls.__name__: cls for cls in CONFIG_CLASSES}[knob.config]
    for choice in knob.choices:
        text = str(choice) if knob.enum is not None else choice  # an enum field takes its text too
        assert getattr(config_class(**{knob.name: text}), knob.name) == choice
    if knob.enum is not None:
        assert knob.choices == tuple(knob.enum) and knob.value_type is knob.enum
    with pytest.raises(ConfigError, match=r"it must be .*one of: ") as caught:
        config_class(**{knob.name: "nonsense"})
    assert caught.value.field == knob.name and caught.value.value == "nonsense"


@pytest.mark.parametrize("knob", all_knobs(), ids=lambda knob: f"{knob.config}.{knob.name}")
def test_none_only_where_the_knob_allows_it_and_bools_are_bools(knob):
    config_class = {cls.__name__: cls for cls in CONFIG_CLASSES}[knob.config]
    if knob.optional:
        assert getattr(config_class(**{knob.name: None}), knob.name) is None
        assert knob.allowed.startswith("None")
    else:
        with pytest.raises(ConfigError) as caught:
            config_class(**{knob.name: None})
        assert caught.value.field == knob.name and caught.value.value is None
    if knob.value_type is bool:
        with pytest.raises(ConfigError, match="True or False"):
            config_class(**{knob.name: 1})


def test_config_error_is_a_value_error_with_structure_and_another_name_for_the_field():
    with pytest.raises(ValueError) as caught:
        TrainingConfig(batch_size=0)
    error = caught.value
    assert isinstance(error, ConfigError)
    assert (error.config, error.field, error.value) == ("TrainingConfig", "batch_size", 0)
    assert error.allowed == "an integer in 1..1000000" == knob_of(TrainingConfig, "batch_size").allowed
    assert error.message_for("--batch-size") == "--batch-size=0 is not allowed; it must be an integer in 1..1000000"


def test_cross_field_checks_raise_config_errors_too():
    with pytest.raises(ConfigError, match=r"ModelConfig.neighbor_count=2 .* 3..1000") as caught:
        ModelConfig(gridsize=2, neighbor_count=2)
    assert caught.value.field == "neighbor_count"
    assert ModelConfig(gridsize=2, neighbor_count=3).channels == 4


def test_devices_take_auto_a_count_or_gpu_indices():
    devices = knob_of(ExecutionConfig, "devices")
    assert [devices.from_text(text) for text in ("auto", "2", "0,2", "1,")] == ["auto", 2, "0,2", "1,"]
    for good in ("auto", 1, 4096, "0,2", "1,"):
        assert ExecutionConfig(devices=good).devices == good
    for bad in (0, 4097, True, "", "a,b", "gpu", None):
        with pytest.raises(ConfigError, match="GPU indices"):
            ExecutionConfig(devices=bad)


def test_moved_fields_live_in_the_training_config():
    """learning rate, schedule and the best-epoch policy feed training, not execution (model files keep loading)."""
    moved = ("learning_rate", "scheduler", "warmup_epochs", "gradient_clip_val", "accumulate_grad_batches",
             "early_stop_patience", "checkpoint_monitor", "checkpoint_mode", "checkpoint_save_top_k")  # fmt: skip
    execution = {f.name for f in dataclasses.fields(ExecutionConfig)}
    assert all(knob_of(TrainingConfig, name).section is Section.TRAINING for name in moved)
    assert not execution & set(moved)
