"""Errors a user can fix in a principle file.

`UserError` lives at the bottom of cai (`cai.core.errors`); a principle file that does not
validate raises its subclass, carrying one located line per problem.
"""

from cai.core.errors import UserError

__all__ = ["ConstitutionError", "UserError"]


class ConstitutionError(UserError):
    """A principle file that does not validate; `problems` holds one located line per issue."""
