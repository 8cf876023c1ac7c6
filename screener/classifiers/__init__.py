"""Classifiers: texts in, one probability per class out (negative among the classes), with a stable model id."""

from screener.classifiers.base import Classifier

__all__ = ["Classifier"]
