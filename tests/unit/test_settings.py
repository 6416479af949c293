"""The settings object: environment, YAML file, defaults, and secret handling."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from propagator.settings import ConfigFileError, load_settings


class TestSources:
    def test_defaults(self) -> None:
        """With nothing set, the documented defaults apply."""
        settings = load_settings()
        assert 8080 == settings.ingest.port
        assert "identity.revocations" == settings.kafka.topic
        assert 256 * 1024 == settings.ingest.max_body_bytes
        assert 180.0 == settings.workos.tolerance_s
        assert "propagator:revoked:" == settings.denylist.key_prefix
        assert "propagator.redis-denylist" == settings.worker.group_id

    def test_nested_environment_variables(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """PROPAGATOR_ prefix, nested with a double underscore."""
        monkeypatch.setenv("PROPAGATOR_KAFKA__TOPIC", "t1")
        monkeypatch.setenv("PROPAGATOR_INGEST__PORT", "9000")
        settings = load_settings()
        assert "t1" == settings.kafka.topic
        assert 9000 == settings.ingest.port

    def test_yaml_file_then_environment_on_top(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The YAML file sets values; the environment overrides them field by field."""
        config = tmp_path / "propagator.yaml"
        config.write_text("kafka:\n  topic: from-file\n  topic_partitions: 3\n")
        monkeypatch.setenv("PROPAGATOR_KAFKA__TOPIC", "from-env")
        settings = load_settings(config)
        assert "from-env" == settings.kafka.topic
        assert 3 == settings.kafka.topic_partitions

    def test_config_path_from_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """PROPAGATOR_CONFIG names the file when --config is not given."""
        config = tmp_path / "c.yaml"
        config.write_text("ingest:\n  port: 8181\n")
        monkeypatch.setenv("PROPAGATOR_CONFIG", str(config))
        assert 8181 == load_settings().ingest.port

    def test_missing_config_file_is_an_error(self, tmp_path: Path) -> None:
        """A named file that does not exist is reported, not silently skipped."""
        with pytest.raises(ConfigFileError, match="not found"):
            load_settings(tmp_path / "absent.yaml")

    def test_unknown_keys_are_refused(self, tmp_path: Path) -> None:
        """A typo in the file fails loudly instead of being ignored."""
        config = tmp_path / "c.yaml"
        config.write_text("kafka:\n  topik: x\n")
        with pytest.raises(ValidationError):
            load_settings(config)


class TestSecrets:
    def test_comma_separated_secrets_for_rotation(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Several active secrets come from one variable."""
        monkeypatch.setenv("PROPAGATOR_WORKOS__SECRETS", "whsec_old, whsec_new")
        assert [b"whsec_old", b"whsec_new"] == load_settings().workos.active_secrets()

    def test_secret_file_adds_one_secret_per_line(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A mounted secret file works, one secret per line."""
        secret_file = tmp_path / "secret"
        secret_file.write_text("whsec_a\n\nwhsec_b\n")
        monkeypatch.setenv("PROPAGATOR_WORKOS__SECRET_FILE", str(secret_file))
        assert [b"whsec_a", b"whsec_b"] == load_settings().workos.active_secrets()

    def test_secrets_never_appear_in_repr_or_dump(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Logging the settings cannot leak a secret."""
        monkeypatch.setenv("PROPAGATOR_WORKOS__SECRETS", "whsec_topsecret")
        settings = load_settings()
        assert "topsecret" not in repr(settings)
        assert "topsecret" not in str(settings.model_dump())
        assert "topsecret" not in settings.model_dump_json()
