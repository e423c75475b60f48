"""Who is acting, from where — passed explicitly from views/API/CLI/tasks into services."""

from __future__ import annotations

from dataclasses import dataclass

from repository.models import User


@dataclass(frozen=True)
class Actor:
    """The identity a service acts for. ``user`` is None for anonymous visitors and the system."""

    user: User | None
    ip: str = ""
    system: bool = False

    @property
    def label(self) -> str:
        if self.system:
            return "system"
        return self.user.email if self.user is not None else "anonymous"

    @property
    def user_id(self) -> int | None:
        return self.user.id if self.user is not None else None


SYSTEM = Actor(user=None, system=True)
ANONYMOUS = Actor(user=None)
