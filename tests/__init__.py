"""The test suite as one package: its folders (tests.kernels, tests.calibration, ...) mirror torch_ternary/ without
taking top-level import names (transformers imports a PyPI package named ``kernels``)."""
