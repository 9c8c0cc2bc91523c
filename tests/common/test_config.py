"""Configuration precedence (defaults < TOML < environment < CLI) and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import ConfigError, RankrlConfig, describe, load_config, parse_set_flags


def test_model_defaults() -> None:
    m = RankrlConfig().model
    assert (m.actor_learning_rate, m.critic_learning_rate, m.conservative_weight) == (3e-4, 3e-4, 0.05)
    assert (m.hidden_units, m.initial_temperature, m.temp_learning_rate, m.scale_augmentation) == (
        (64, 64),
        0.01,
        0,
        True,
    )
    assert (m.batch_size, m.n_epochs, m.n_critics, m.gamma, m.tau, m.n_action_samples) == (
        256,
        100,
        2,
        0.99,
        0.005,
        10,
    )


def test_precedence(tmp_path: Path) -> None:
    f = tmp_path / "rankrl.toml"
    f.write_text('[model]\nbatch_size = 128\nn_epochs = 7\ngamma = 0.5\n[paths]\nbuffer_dir = "/b"\n')
    env = {"RANKRL_MODEL__N_EPOCHS": "9", "RANKRL_MODEL__GAMMA": "0.6", "UNRELATED": "x"}
    cli = parse_set_flags(["model.gamma=0.7"])
    cfg = load_config(f, environ=env, cli=cli)
    assert cfg.model.batch_size == 128  # TOML over default
    assert cfg.model.n_epochs == 9  # environment over TOML
    assert cfg.model.gamma == 0.7  # CLI over environment
    assert cfg.paths.buffer_dir == "/b"
    assert cfg.model.tau == 0.005  # untouched default


def test_tuple_and_mapping_fields(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        "[reward]\nposition_weights = [1.0, 0.5]\n[reward.action_values]\nclick=1\nwishlist=2\ncart=3\npurchase=4\n"
    )
    cfg = load_config(f, environ={"RANKRL_MODEL__HIDDEN_UNITS": "64,32"})
    assert cfg.reward.position_weights == (1.0, 0.5)
    assert cfg.reward.action_values["purchase"] == 4.0
    assert cfg.model.hidden_units == (64, 32)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"RANKRL_MODEL__BATCH_SIZE": "lots"}, r"model\.batch_size \(from environment\).*'lots'"),
        ({"RANKRL_MODEL__BATCH_SIZE": "0"}, r"model\.batch_size.*>= 1"),
        ({"RANKRL_MODEL__NOPE": "1"}, r"model\.nope.*unknown field"),
        ({"RANKRL_GATE__ALPHA": "0.9"}, r"gate\.alpha"),
    ],
)
def test_invalid_values_fail_clearly(env: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(environ=env)


def test_bad_file_and_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})
    f = tmp_path / "c.toml"
    f.write_text("[nonsense]\nx=1\n")
    with pytest.raises(ConfigError, match=r"\[nonsense\].*unknown"):
        load_config(f, environ={})
    with pytest.raises(ConfigError, match=r"section\.field=value"):
        parse_set_flags(["gamma=1"])


def test_describe_masks_secrets() -> None:
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Sec:
        sasl_password: str = "hunter2"
        user: str = "me"

    @dataclass(frozen=True)
    class Top:
        kafka: Sec = field(default_factory=Sec)

    lines = describe(Top())
    assert "kafka.sasl_password=***" in lines and "kafka.user=me" in lines
    assert not any("hunter2" in line for line in lines)


def test_describe_shows_paths_of_tls_files() -> None:
    """ssl_keyfile is a path, not a secret (it holds 'key'); the key's password stays masked."""
    cfg = load_config(environ={}, cli={"streamer": {"ssl_keyfile": "/etc/rankrl/client.key"}})
    lines = describe(cfg)
    assert "streamer.ssl_keyfile=/etc/rankrl/client.key" in lines


@pytest.mark.parametrize(
    "source", ["kafka://host", "kafka://host/", "kafka://host:notaport/topic", "kafka:///topic", "kafka://h:9092/a/b"]
)
def test_a_bad_kafka_source_is_a_config_error(source: str) -> None:
    with pytest.raises(ConfigError, match=r"streamer\.source"):
        load_config(environ={}, cli={"streamer": {"source": source}})
    load_config(environ={}, cli={"streamer": {"source": "kafka://a:9092,b:9093/search-logs"}})


def test_fit_keeps_the_original_pipelines_cql() -> None:
    from trainer.fit import ORIGINAL_PIPELINE

    m = ORIGINAL_PIPELINE.model
    assert (m.conservative_weight, m.hidden_units, m.initial_temperature, m.scale_augmentation) == (
        5.0,
        (256, 256),
        1.0,
        False,
    )
