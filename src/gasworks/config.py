"""Settings from the environment (GASWORKS_*) or a TOML file (GASWORKS_CONFIG, default gasworks.toml)."""

import os
from pathlib import Path

from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GASWORKS_", extra="ignore")

    database_url: str = "sqlite:///gasworks.db"
    mqtt_url: str | None = None  # meter delivery, next issue
    host: str = "127.0.0.1"
    port: int = 8000
    log_json: bool = False

    # Limits: every one named, configurable and enforced.
    notification_clock_skew_s: int = 300  # timestamps further than this from now are refused
    request_body_bytes_max: int = 64 * 1024
    payment_fen_max: int = 5_000_000  # ¥50,000 in one payment; larger needs a counter
    page_size_max: int = 500

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("GASWORKS_CONFIG", "gasworks.toml"))
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
        )
