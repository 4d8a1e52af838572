"""Evaluation through the ranking core: labelled pairs, labeler metrics, reward models, policies, characters."""

# Installed as cai.evaluation: a bare `import evaluation` must not shadow a user's own module.
if __name__ != "cai.evaluation":
    raise ImportError(f"import cai.evaluation, not {__name__}")
