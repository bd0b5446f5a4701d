"""One load: open -> plan -> prefetch -> copy -> report -> restore (see ``pipeline``)."""
