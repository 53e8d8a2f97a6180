from .classification import evaluate_classifier

__all__ = ["evaluate_classifier"]
