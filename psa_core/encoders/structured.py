"""The light encoder: a deterministic structured vector of the profile, no model at all.

Layout (33 values, `STRUCTURED_FEATURES` names each): Age/100, then one-hot Age_Group (8), Gender (2),
Religion (4), Physical_Condition (4), Mental_Condition (7), then one flag per category in reference order
(1 = banned). Adapters trained on it record `psa.encoder = "psa-structured-v1"`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..profile import (
    AGE_GROUPS,
    CATEGORIES,
    GENDERS,
    MAX_AGE,
    MENTAL_CONDITIONS,
    PHYSICAL_CONDITIONS,
    RELIGIONS,
    UserProfile,
)
from .base import ProfileEncoder

STRUCTURED_ENCODER = "psa-structured-v1"
_ONE_HOT = (("Age_Group", tuple(AGE_GROUPS), "age_group"), ("Gender", GENDERS, "gender"),
            ("Religion", RELIGIONS, "religion"), ("Physical_Condition", PHYSICAL_CONDITIONS, "physical_condition"),
            ("Mental_Condition", MENTAL_CONDITIONS, "mental_condition"))
STRUCTURED_FEATURES = (("Age/100",) + tuple(f"{column}={value}" for column, values, _ in _ONE_HOT for value in values)
                       + tuple(f"Banned:{category}" for category in CATEGORIES))
STRUCTURED_DIM = len(STRUCTURED_FEATURES)
_INDEX = {name: i for i, name in enumerate(STRUCTURED_FEATURES)}


def structured_vector(profile: UserProfile) -> list[float]:
    vector = [0.0] * STRUCTURED_DIM
    vector[0] = profile.age / MAX_AGE
    for column, _, attribute in _ONE_HOT:
        vector[_INDEX[f"{column}={getattr(profile, attribute)}"]] = 1.0
    for category in profile.banned:
        vector[_INDEX[f"Banned:{category}"]] = 1.0
    return vector


class StructuredEncoder(ProfileEncoder):
    name = STRUCTURED_ENCODER

    @property
    def identity(self) -> str:
        return STRUCTURED_ENCODER

    @property
    def dim(self) -> int:
        return STRUCTURED_DIM

    def encode_uncached(self, profiles: Sequence[UserProfile]) -> torch.Tensor:
        return torch.tensor([structured_vector(p) for p in profiles], dtype=torch.float32)
