from .classifier import RepClassifier, build_classifier
from .detector import Detector, build_detector
from .zoo import CLASSIFIER_ARCHS, DETECTOR_SCALES, ClassifierArch, DetectorScale, classifier_arch, detector_scale

__all__ = ["RepClassifier", "build_classifier", "Detector", "build_detector", "CLASSIFIER_ARCHS", "ClassifierArch", "classifier_arch",
           "DETECTOR_SCALES", "DetectorScale", "detector_scale"]
