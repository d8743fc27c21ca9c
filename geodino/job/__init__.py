"""The streaming job every dense product plugs into: the tile graph's scheduler (:mod:`~geodino.job.schedule`),
the tasks around a product's inference (read, pieces, blend: :mod:`~geodino.job.tasks`), the product protocol
(:mod:`~geodino.job.product`), the plan's fingerprint (:mod:`~geodino.job.plan`) and the driver that prepares,
resumes, refuses, runs, finalizes and maps faults (:mod:`~geodino.job.run`). Products (``geodino.embed``
features, ``geodino.canopy`` heights) import this package; it imports none of them."""

from geodino._lazy import lazy_exports

# Imported on first use (geodino._lazy): importing one submodule does not import the others.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "plan": ["fingerprint"],
    "product": ["Product", "TaskOptions"],
    "run": ["JobSummary", "run_job"],
    "schedule": ["Scheduler", "SceneWork"],
})
