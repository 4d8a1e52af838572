"""Principle files: schema, loading with located errors, linting, seeded sampling, importers."""

# Installed as cai.constitution: a bare `import constitution` must not shadow a user's own module.
if __name__ != "cai.constitution":
    raise ImportError(f"import cai.constitution, not {__name__}")

from .errors import ConstitutionError, UserError
from .importers import import_constitution
from .library import library_names, library_path
from .loader import dump_constitution, load_constitution
from .sampling import derive_seed, weighted_sample
from .schema import Constitution, FewShot, Message, Principle, QueryGeneration, Trait

__all__ = [
    "Constitution",
    "ConstitutionError",
    "FewShot",
    "Message",
    "Principle",
    "QueryGeneration",
    "Trait",
    "UserError",
    "derive_seed",
    "dump_constitution",
    "import_constitution",
    "library_names",
    "library_path",
    "load_constitution",
    "weighted_sample",
]
