"""Who is asking, and whether they may.

Deny by default: every view declares who may call it, with :func:`allow` (roles) or
:func:`public`. The app factory refuses to start when a route declares nothing, and every
request is checked against its view's declaration before the view runs.
"""

from core.auth.access import (
    ROLES,
    STAFF,
    allow,
    current_user,
    public,
)

__all__ = ["ROLES", "STAFF", "allow", "current_user", "public"]
