"""Exports to TRL dataset formats, and training on them."""

# Installed as cai.training: a bare `import training` must not shadow a user's own module.
if __name__ != "cai.training":
    raise ImportError(f"import cai.training, not {__name__}")
