import os
import tempfile

# Keep compiled kernels inside the test run (and shared by its workers) unless CI set a dir.
os.environ.setdefault("EMBER_CACHE_DIR", os.path.join(tempfile.gettempdir(), "ember-test-cache"))
os.environ.setdefault("EMBER_QUIET", "1")
