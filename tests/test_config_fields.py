"""TRL's config fields read from source (core.training.config_fields) are the real classes' fields: the same
names, and every value the real annotation accepts is accepted, and coerced the same way."""

from __future__ import annotations

import dataclasses

import pytest
from marginlens.core.errors import MarginLensError
from marginlens.core.training import settings
from marginlens.core.training.config_fields import parsed_field_types, training_arguments_fields
from marginlens.core.training.presets import trl_fields

SAMPLES = [1, 1.5, 2.0, "x", "cosine", True, None, [1], ["a"], {"a": 1}]


def coerced(key: str, value: object, annotation: object) -> tuple:
    try:
        return ("ok", settings._coerce(key, value, annotation))
    except MarginLensError:
        return ("refused",)


def declared(cls: type, key: str) -> object:
    """The annotation as the class declares it. Not Field.type: transformers' HfArgumentParser rewrites that in
    place (a `str | list[X]` field becomes `list[X]`), so it depends on which test of the process parsed first."""
    return next(klass.__annotations__[key] for klass in cls.__mro__ if key in getattr(klass, "__annotations__", {}))


@pytest.mark.parametrize("method", ["dpo", "simpo"])
def test_the_parsed_fields_are_the_real_ones(method):
    cls = settings.config_class(method)
    real = {key: declared(cls, key) for key in trl_fields(method)}
    parsed = parsed_field_types(method)
    assert parsed is not None and set(parsed) == set(real)
    looser = []
    for key in real:
        for value in SAMPLES:
            got, want = coerced(key, value, parsed[key]), coerced(key, value, real[key])
            if got != want:
                # a class the source names but cannot be resolved without importing it (accelerate's
                # ParallelismConfig) stands for a str enum: looser, never stricter; TRL's own check of the
                # built config still refuses the value before a job starts
                assert want == ("refused",) and got[0] == "ok", (key, value, got, want)
                looser.append(key)
    assert set(looser) <= {"parallelism_config"}


def test_the_renamed_fields_are_read_from_training_arguments():
    from transformers import TrainingArguments

    assert training_arguments_fields() == {f.name for f in dataclasses.fields(TrainingArguments)}


def test_a_typo_and_a_wrong_type_are_still_refused_in_one_line():
    with pytest.raises(MarginLensError, match="unknown training setting 'learning_rat'.*did you mean learning_rate"):
        settings.resolve_settings("simpo", overrides={"learning_rat": 1e-5}, device="cpu")
    with pytest.raises(MarginLensError, match="'learning_rate' expects float"):
        settings.resolve_settings("simpo", overrides={"learning_rate": "fast"}, device="cpu")
