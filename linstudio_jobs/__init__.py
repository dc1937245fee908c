"""The render job on the ground floor: `JobSpec` (what decides a render's pixels, typed, with its
key), its versioned serialisation, and the job key format.

On the ground floor because every room handles jobs and none may stand on another for them:
`manifests` builds specs, `catalogue` stores, loads and derives them (re-renders), `flows` maps
them to the engine. It stands only on `linfusion_engine.capabilities` (torch-free, importing
nothing), for the size rule every job obeys.
"""

from linfusion_engine.capabilities import MAX_SIDE, SIZE_STEP, check_size, size_problem
from linstudio_jobs.keys import (
           JOB_KEY_VERSION,
           KEY_FIELDS,
           OPTIONAL_KEY_FIELDS,
           job_key,
)
from linstudio_jobs.spec import SPEC_VERSION, JobSpec, pixel_fields

__all__ = ["JOB_KEY_VERSION", "KEY_FIELDS", "MAX_SIDE", "OPTIONAL_KEY_FIELDS", "SIZE_STEP", "SPEC_VERSION", "JobSpec",
           "check_size", "job_key", "pixel_fields", "size_problem"]
