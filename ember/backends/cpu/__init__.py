from . import attention  # noqa: F401  (registers the printer of the fused attention template)
