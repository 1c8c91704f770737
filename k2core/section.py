"""`Section`: the base of every typed configuration section (pipeline stages, the model, the
optimizer, the experiments). Unknown fields are errors, assignments are validated."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
