"""The two codec roles of a rig, with the spelling each layer uses for them, derived in one place.

CodecRole      bundle / CLI ("intra", "side_info")   wire (Role)     camera config ("reference", "dependent")
INTRA          intra: no side information             REFERENCE       reference: its frame is the side image
SIDE_INFO      side_info: decoded with the side image DEPENDENT       dependent: every other camera
"""

from __future__ import annotations

import enum

from stereodsc.errors import ConfigError
from stereodsc.wire import Role


class CodecRole(str, enum.Enum):
    """Which codec of a bundle a camera runs; a ``str`` so that manifest keys and CLI choices match it."""

    INTRA = "intra"
    SIDE_INFO = "side_info"

    def __str__(self) -> str:
        return self.value

    @property
    def wire(self) -> Role:
        """The role field of this codec's wire frames (the host picks the codec back from it)."""
        return Role.REFERENCE if self is CodecRole.INTRA else Role.DEPENDENT

    @property
    def camera(self) -> str:
        """The camera config's name for a camera running this codec."""
        return "reference" if self is CodecRole.INTRA else "dependent"

    @classmethod
    def of(cls, value: str | CodecRole) -> CodecRole:
        """A role from its bundle name ("intra", "side_info") or camera name ("reference", "dependent")."""
        for role in cls:
            if value in (role, role.value, role.camera):
                return role
        names = [r.value for r in cls] + [r.camera for r in cls]
        raise ConfigError(f"unknown codec role {value!r}; choose one of {names}")

    @classmethod
    def from_wire(cls, role: Role) -> CodecRole:
        return cls.INTRA if role == Role.REFERENCE else cls.SIDE_INFO
