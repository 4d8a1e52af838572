"""The bottom of cai: what every other package needs and nothing it needs in turn.

Errors a user can fix, ids and seeds, what shapes output (declared once, on config fields), the
stage protocol (tasks and their outputs), the row layouts other tools publish, and the one
progress reporter. It imports no other part of cai, so any package may import it.
"""

# Installed as cai.core: a bare `import core` must not shadow a user's own module.
if __name__ != "cai.core":
    raise ImportError(f"import cai.core, not {__name__}")

from .errors import UserError
from .ids import derive_seed, record_id

__all__ = ["UserError", "derive_seed", "record_id"]
