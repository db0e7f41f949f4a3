"""Frontends translate a model from its framework into an Ember ``Graph``.

Each frontend imports its framework lazily: ``from ember.frontends.torch import from_torch``.
"""
