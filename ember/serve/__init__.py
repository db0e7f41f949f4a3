"""Serving Ember models over HTTP with the Open Inference Protocol (KServe v2).

>>> from ember.serve import create_app, ServeConfig
>>> app = create_app({"mlp": ember.load("mlp.ember")})   # then run it with uvicorn

Needs the ``serve`` extra: ``pip install 'ember-ml[serve]'`` (FastAPI, uvicorn, prometheus_client).
"""
from .app import ServeConfig, create_app, model_name  # noqa: F401
from .batching import BatchConfig  # noqa: F401
