"""All settings in one validated place: defaults, overridden by ``CHARGECAST_*`` env vars."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

CANONICAL_DATA_URL = "https://raw.githubusercontent.com/pycaret/datasets/main/data/common/insurance.csv"
CANONICAL_DATA_SHA256 = "6e3894cf7d9210613f62c866684055decea694345cd4f244ecd7167041578c68"


class Settings(BaseSettings):
    """Typed settings; every field can be set as ``CHARGECAST_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CHARGECAST_", extra="ignore")

    data: Path | None = Field(default=None, description="Training CSV; when unset the canonical file is downloaded.")
    data_url: str = Field(default=CANONICAL_DATA_URL, description="Where the canonical data set is downloaded from.")
    data_sha256: str = Field(default=CANONICAL_DATA_SHA256, pattern=r"^[0-9a-f]{64}$")
    cache_dir: Path = Field(default_factory=lambda: platformdirs.user_cache_path("chargecast"))
    download_timeout: float = Field(default=30.0, gt=0)
    model_dir: Path = Field(default=Path("models/current"), description="The model artifact directory to serve.")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
