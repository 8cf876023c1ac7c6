"""Classifiers: texts in, P(negative) out, with a stable model id."""

from screener.classifiers.base import Classifier

__all__ = ["Classifier"]
