"""Installs the module plus a one-line ``.pth`` file in site-packages (setuptools has no declarative way to
ship a ``.pth``): at interpreter start it registers a finder that acts on ``import mmcv.ops`` only."""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "qarep_mmcv_lite_ops.pth"


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        self.copy_file(PTH, os.path.join(self.build_lib, PTH))


setup(cmdclass={"build_py": BuildPyWithPth})
