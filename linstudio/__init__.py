"""LinFusion Studio: manifests in, catalogued renders out.

The `linstudio` package holds what ties the parts together: the one settings object and the
command line. The parts themselves live in `linfusion_engine` (model maths), `manifests` (the
format teams write), `catalogue` (what exists) and `flows` (orchestration).
"""

__version__ = "0.1.0"
