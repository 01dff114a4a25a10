"""The model of the run whose checkpoint.pt, in fedsim's first checkpoint format, is kept
beside this file (tests/test_resume_checks.py resumes it): 490 weights, so that the
committed files stay small."""

from torch import nn


def tiny(num_classes: int, image_shape: tuple[int, int, int]) -> nn.Module:
    channels = image_shape[0]
    return nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(channels * 16, num_classes))
